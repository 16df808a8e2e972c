"""The relay and the mirror in worker processes of their own, on one PostgreSQL database and one
anvil node: payments that a third process accepts settle exactly as a single engine settles
them, the workers ride out a node that stops answering for a while, and a worker that dies
stops the run loudly instead of leaving it waiting."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from engine.chain.backends import AnvilBackend, EmbeddedBackend
from engine.chain.backends.anvil import AnvilProcess
from engine.ops.reconcile import ChainTarget, reconcile
from engine.pipeline.engine import Role, SettlementEngine
from engine.pipeline.workers import (
    IDLE_STEPS_AT_FIRST_WAIT,
    IDLE_WAIT_S,
    IDLE_WAIT_S_LAST,
    RETRY_WAIT_S_FIRST,
    RETRY_WAIT_S_LAST,
    WorkerFailed,
    pause_s,
    relay_and_mirror,
    running_workers,
)
from engine.store.db import scratch_schema
from engine.store.projections import count_by_status
from engine.store.schema import ledger_entries, txs
from engine.tools.bench_core import SHOP_POLL_S, Load, settle_payments, settle_with_workers
from engine.tools.fault_proxy import Fault, FaultProxy
from engine.tools.localnet import local_engine
from tests.fixtures.pipeline_support import assert_books_match_chain

PAYMENTS = 40
IN_FLIGHT = 15


@pytest.fixture
def shop(postgres_admin: Engine, anvil_process: AnvilProcess) -> Iterator[SettlementEngine]:
    """An engine with no roles of its own: it accepts commands, as the API's process would.
    The session's node goes back to where it was: the blocks a run mines would otherwise
    move every later deployment on it (the indexer tests read from block 0)."""
    backend = AnvilBackend(anvil_process)
    snapshot = backend.snapshot()
    try:
        with scratch_schema(postgres_admin, "test") as url:
            engine = local_engine(url, backend, roles=frozenset())
            yield engine
            engine.close()
    finally:
        backend.revert(snapshot)


@pytest.mark.postgres
@pytest.mark.anvil
def test_workers_settle_what_another_process_accepted(shop: SettlementEngine) -> None:
    figures = settle_with_workers(shop, Load(PAYMENTS, IN_FLIGHT))

    assert len(figures.lags_s) == PAYMENTS
    with shop.db.snapshot() as conn:
        assert count_by_status(conn) == {"succeeded": PAYMENTS}
        c = ledger_entries.c
        posted = dict(
            conn.execute(
                select(c.kind, func.count()).where(c.state == "posted").group_by(c.kind)
            ).all()
        )
        senders = set(conn.execute(select(txs.c.sender).distinct()).scalars())
    assert posted == {"authorized": PAYMENTS, "captured": PAYMENTS}
    # Only the relay worker's operator lane sent: the shop itself sends nothing.
    assert senders == {shop.deployment.operator.address}
    assert_books_match_chain(shop)
    target = ChainTarget(shop.backend.w3, shop.chain_id, shop.deployment.escrow.address)
    report = reconcile(shop.db, target, now=shop.now())
    assert (report.matched, report.mismatched) == (PAYMENTS + 1, 0)


@pytest.mark.postgres
@pytest.mark.anvil
def test_workers_ride_out_a_node_that_stops_answering_for_a_while(
    shop: SettlementEngine,
) -> None:
    """The workers reach the node through a proxy that, once they run, refuses their next
    requests and swallows the answers to two sends: each failed step is taken again after a
    pause, the lost sends are looked up rather than sent twice, and every payment settles."""
    with FaultProxy(shop.backend.process.port) as proxy:  # type: ignore[attr-defined]
        through_proxy = f"http://127.0.0.1:{proxy.port}"
        specs = [replace(spec, rpc_url=through_proxy) for spec in relay_and_mirror(shop)]
        with running_workers(specs) as workers:
            proxy.inject(Fault.DROP_RESPONSE, "eth_sendRawTransaction", times=2)
            proxy.inject(Fault.REFUSE, times=8)

            def advance() -> None:
                workers.check()
                time.sleep(SHOP_POLL_S)

            figures = settle_payments(shop, Load(PAYMENTS, IN_FLIGHT), advance)
        assert proxy.fired == {Fault.REFUSE: 8, Fault.DROP_RESPONSE: 2}

    assert len(figures.lags_s) == PAYMENTS
    with shop.db.snapshot() as conn:
        assert count_by_status(conn) == {"succeeded": PAYMENTS}
    assert_books_match_chain(shop)


def test_the_pause_after_a_failed_step_doubles_up_to_its_cap() -> None:
    waits = [pause_s(n, RETRY_WAIT_S_FIRST, RETRY_WAIT_S_LAST) for n in range(1, 12)]

    assert waits[:3] == [RETRY_WAIT_S_FIRST, 2 * RETRY_WAIT_S_FIRST, 4 * RETRY_WAIT_S_FIRST]
    assert waits == sorted(waits) and waits[-1] == RETRY_WAIT_S_LAST
    assert pause_s(10**6, RETRY_WAIT_S_FIRST, RETRY_WAIT_S_LAST) == RETRY_WAIT_S_LAST


def test_an_idle_worker_keeps_its_short_wait_for_a_while_then_looks_less_often() -> None:
    def idle_wait(steps: int) -> float:
        return pause_s(steps, IDLE_WAIT_S, IDLE_WAIT_S_LAST, IDLE_STEPS_AT_FIRST_WAIT)

    flat = range(1, IDLE_STEPS_AT_FIRST_WAIT + 2)
    assert {idle_wait(steps) for steps in flat} == {IDLE_WAIT_S}
    assert idle_wait(IDLE_STEPS_AT_FIRST_WAIT + 2) == 2 * IDLE_WAIT_S
    assert idle_wait(IDLE_STEPS_AT_FIRST_WAIT + 100) == IDLE_WAIT_S_LAST


@pytest.mark.postgres
@pytest.mark.anvil
def test_a_worker_that_dies_fails_the_run(shop: SettlementEngine) -> None:
    with running_workers(relay_and_mirror(shop)) as workers:
        workers.check()  # both up
        mirror = workers.processes[1]
        assert mirror.pid is not None
        os.kill(mirror.pid, signal.SIGKILL)
        mirror.join(10)

        with pytest.raises(WorkerFailed, match="mirror worker exited"):
            workers.check()


def test_workers_need_a_node_they_can_share(tmp_path: Path) -> None:
    with EmbeddedBackend() as backend:
        url = f"sqlite:///{tmp_path / 'one.db'}"
        engine = local_engine(url, backend, roles=frozenset({Role.MIRROR}))
        try:
            with pytest.raises(TypeError, match="anvil"):
                relay_and_mirror(engine)
        finally:
            engine.close()
