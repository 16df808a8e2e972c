"""The engine's own loop drives the sagas it is given: no caller ticks an orchestrator, yet a
checkout started on the engine's orchestrator is held, captured and booked by
``run_until_quiescent``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.chain.backends import EmbeddedBackend
from engine.pipeline.engine import SettlementEngine
from engine.saga.orchestrator import Orchestrator
from engine.tools.localnet import local_engine
from tests.fixtures.pipeline_support import AMOUNT, books, checkout, payment_of, steps_of


@pytest.fixture
def driving_engine(db_url: str) -> Iterator[SettlementEngine]:
    with EmbeddedBackend() as backend:
        settlement = local_engine(db_url, backend, sagas=Orchestrator)
        yield settlement
        settlement.close()


def test_the_engine_loop_runs_a_checkout_saga_to_its_end(
    driving_engine: SettlementEngine,
) -> None:
    engine = driving_engine
    orchestrator = engine.sagas
    assert isinstance(orchestrator, Orchestrator)
    checkout(engine, orchestrator, "co-loop", auto_capture=True)

    engine.run_until_quiescent()

    assert orchestrator.status("co-loop") == ("completed", "captured")
    assert books(payment_of(engine, "co-loop")) == ("succeeded", AMOUNT, 0)
    assert steps_of(engine, "co-loop") == [
        ("create", "forward", "done"),
        ("capture", "forward", "done"),
    ]
