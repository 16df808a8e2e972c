"""Fixtures of the saga tests: a settlement engine on the embedded EVM and its orchestrator."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.chain.backends import EmbeddedBackend
from engine.saga.engine import Role, SettlementEngine
from engine.saga.orchestrator import Orchestrator


@pytest.fixture
def engine(db_url: str) -> Iterator[SettlementEngine]:
    with EmbeddedBackend() as backend:
        # The loop drives no sagas: saga tests tick an orchestrator of their own (their clocks,
        # policies, failing services); test_engine_loop.py covers the loop driving them.
        settlement = SettlementEngine(db_url, backend, roles=frozenset({Role.RELAY, Role.MIRROR}))
        yield settlement
        settlement.close()


@pytest.fixture
def orchestrator(engine: SettlementEngine) -> Orchestrator:
    return Orchestrator(engine.db, engine.service, engine.now)
