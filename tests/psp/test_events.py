"""Processor events and the sagas that act on them agree on the vocabulary.

psp and saga are independent rooms of one layer, so the event kinds a processor sends
(``PspEventKind``) and the signals the PSP-bridged flow takes (``PspSignal``) are declared on
each side; this is where a kind added on one side and forgotten on the other shows up.
"""

from __future__ import annotations

from engine.psp.events import PspEventKind
from engine.saga.flows import PspSignal


def test_every_processor_event_kind_is_a_signal_of_the_psp_bridged_flow_and_back() -> None:
    assert [kind.value for kind in PspEventKind] == [signal.value for signal in PspSignal]
