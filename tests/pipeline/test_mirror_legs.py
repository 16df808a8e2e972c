"""How the mirror pairs a capture with its LegPaid logs, on notices built by hand: the order
the escrow emits them in, payouts kept as credits in between, and notices of other captures."""

from __future__ import annotations

import pytest

from engine.chain.contracts import logs as chain
from engine.chain.indexer.log_indexer import EscrowLog, LogNotice, LogStage
from engine.domain.money import Leg
from engine.pipeline.mirror import legs_of_captures

PAYMENT = b"\x01" * 32
OTHER = b"\x02" * 32
TOKEN = "0x" + "11" * 20
MERCHANT = "0x" + "22" * 20
LEG_A = "0x" + "33" * 20
LEG_B = "0x" + "44" * 20


def notice(sequence: int, event: chain.EscrowEvent, tx: int = 1) -> LogNotice:
    log = EscrowLog(
        block_number=7,
        block_hash=b"\x07" * 32,
        block_timestamp=1_700_000_000,
        tx_hash=bytes([tx]) * 32,
        log_index=sequence,
        event=event,
    )
    return LogNotice(sequence, LogStage.CONFIRMED, log)


def test_legs_follow_their_capture_even_past_a_credited_payout() -> None:
    notices = [
        notice(1, chain.Captured(PAYMENT, 1, 100, 1)),
        notice(2, chain.Credited(TOKEN, MERCHANT, 90)),  # the merchant could not be paid
        notice(3, chain.LegPaid(PAYMENT, LEG_A, 4)),
        notice(4, chain.LegPaid(PAYMENT, LEG_B, 5)),
        notice(5, chain.Captured(OTHER, 1, 50, 0), tx=2),
    ]
    assert legs_of_captures(notices) == {
        1: (Leg(recipient=LEG_A, amount=4), Leg(recipient=LEG_B, amount=5))
    }


@pytest.mark.parametrize(
    "before",
    [
        [],  # no capture at all
        [notice(1, chain.Captured(OTHER, 1, 100, 1))],  # another payment's capture
        [notice(1, chain.Captured(PAYMENT, 1, 100, 1), tx=9)],  # another transaction's
        [notice(1, chain.Captured(PAYMENT, 1, 100, 1)), notice(2, chain.Voided(OTHER, 1, 5))],
    ],
)
def test_a_leg_without_its_capture_stops_the_mirror(before: list[LogNotice]) -> None:
    with pytest.raises(AssertionError, match="without its capture"):
        legs_of_captures([*before, notice(3, chain.LegPaid(PAYMENT, LEG_A, 4))])
