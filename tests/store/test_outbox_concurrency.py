"""Several relay workers on one outbox: no operation claimed twice, none lost, payment order
kept, crashed workers' leases taken over. Real threads on real databases, and a Hypothesis
model of random enqueue/claim/complete/fail/crash/retry sequences."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import ClassVar

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, text

from engine.store.db import Database
from engine.store.outbox import (
    NotLeaseHolder,
    Outbox,
    OutboxPolicy,
    OutboxRow,
    OutboxStatus,
)
from engine.store.schema import outbox, outbox_history

T0 = 1_700_000_000
OPERATIONS = 120
PAYMENTS = 12
WORKERS = 4
CLAIM_LIMIT = 5
# A worker that finds nothing claimable (every head held by others) looks again; this bounds
# how often before the test gives up.
EMPTY_CLAIMS_MAX = 20_000
IDLE_S = 0.001


def test_workers_in_threads_deliver_every_operation_once_in_payment_order(
    database: Database,
) -> None:
    box = Outbox(database, OutboxPolicy(lease_s=3_600))
    enqueued: dict[str, list[str]] = defaultdict(list)
    with database.transaction() as conn:
        for n in range(OPERATIONS):
            payment = f"pay_{n % PAYMENTS}"
            box.enqueue(conn, f"op_{n}", payment, "capture", {"n": n}, T0)
            enqueued[payment].append(f"op_{n}")
    delivered: dict[str, list[str]] = defaultdict(list)
    lock = threading.Lock()

    def work(worker_id: str) -> None:
        for _ in range(EMPTY_CLAIMS_MAX):
            with database.transaction() as conn:
                taken = box.claim(conn, worker_id, T0, CLAIM_LIMIT)
            if not taken.rows:
                with database.snapshot() as conn:
                    lag = box.lag(conn, T0)
                if lag.pending + lag.in_flight == 0:
                    return
                time.sleep(IDLE_S)
            for row in taken.rows:
                # Noted before the completion commits: the next operation of the payment
                # cannot be claimed before that, so each list is in delivery order.
                with lock:
                    delivered[row.payment_key].append(row.op_id)
                with database.transaction() as conn:
                    box.complete(conn, row.op_id, worker_id, {"by": worker_id})
        raise AssertionError(f"{worker_id} still found work after {EMPTY_CLAIMS_MAX} rounds")

    with ThreadPoolExecutor(WORKERS) as pool:
        for future in [pool.submit(work, f"w{n}") for n in range(WORKERS)]:
            future.result()

    assert delivered == enqueued
    with database.snapshot() as conn:
        rows = box.list_rows(conn)
    assert len(rows) == OPERATIONS
    assert all(row.status == OutboxStatus.COMPLETED for row in rows)
    assert all(row.result == {"by": row.claimed_by} for row in rows)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_claim_skips_rows_another_worker_is_claiming_instead_of_waiting_for_them(
    database: Database,
) -> None:
    box = Outbox(database)
    with database.transaction() as conn:
        for op_id, payment in [("op_a", "pay_a"), ("op_b", "pay_b")]:
            box.enqueue(conn, op_id, payment, "capture", {}, T0)

    with database.transaction() as first:
        assert [row.op_id for row in box.claim(first, "w1", T0, 1).rows] == ["op_a"]
        with database.transaction() as second:
            # Without SKIP LOCKED this claim would queue behind `first`; fail rather than hang.
            second.execute(text("SET LOCAL lock_timeout = '10s'"))
            assert [row.op_id for row in box.claim(second, "w2", T0, 10).rows] == ["op_b"]

    with database.snapshot() as conn:
        assert [(row.op_id, row.claimed_by) for row in box.list_rows(conn)] == [
            ("op_a", "w1"),
            ("op_b", "w2"),
        ]


# The model: what the outbox must do, stated independently of its SQL.

MODEL_POLICY = OutboxPolicy(lease_s=3, attempts_max=3, backoff_base_s=1, backoff_max_s=4)
MODEL_WORKERS = ("w1", "w2", "w3")
MODEL_PAYMENTS = ("pay_a", "pay_b", "pay_c")
EXAMPLES_MAX = 40
STEPS_MAX = 40
OPENING_OPS_MAX = 8


@dataclass
class ModelOp:
    seq: int
    payment: str
    status: OutboxStatus = OutboxStatus.PENDING
    attempts: int = 0
    available_at: int = T0
    holder: str | None = None
    lease_until: int | None = None


class OutboxModel(RuleBasedStateMachine):
    database: ClassVar[Database]  # set by the test on a subclass

    def __init__(self) -> None:
        super().__init__()
        self.box = Outbox(self.database, MODEL_POLICY)
        with self.database.transaction() as conn:
            conn.execute(delete(outbox_history))
            conn.execute(delete(outbox))
        self.now = T0
        self.ops: dict[str, ModelOp] = {}
        # What each running worker believes it holds, with the lease it was given.
        self.held: dict[str, dict[str, int]] = {worker: {} for worker in MODEL_WORKERS}

    def ready(self, op_id: str) -> bool:
        op = self.ops[op_id]
        if op.status == OutboxStatus.IN_FLIGHT:
            return op.lease_until is not None and op.lease_until <= self.now
        if op.status != OutboxStatus.PENDING or op.available_at > self.now:
            return False
        return not any(
            other.payment == op.payment
            and other is not op
            and (
                other.status == OutboxStatus.IN_FLIGHT
                or (other.status == OutboxStatus.PENDING and other.seq < op.seq)
            )
            for other in self.ops.values()
        )

    def held_pairs(self) -> list[tuple[str, str]]:
        return sorted((worker, op_id) for worker, ops in self.held.items() for op_id in ops)

    @initialize(
        payments=st.lists(st.sampled_from(MODEL_PAYMENTS), min_size=1, max_size=OPENING_OPS_MAX)
    )
    def enqueue_opening_operations(self, payments: list[str]) -> None:
        for payment in payments:
            self.enqueue(payment, 0)

    @rule(payment=st.sampled_from(MODEL_PAYMENTS), delay_s=st.integers(0, 3))
    def enqueue(self, payment: str, delay_s: int) -> None:
        op_id = f"op_{len(self.ops)}"
        with self.database.transaction() as conn:
            self.box.enqueue(conn, op_id, payment, "capture", {"n": 1}, self.now + delay_s)
        self.ops[op_id] = ModelOp(len(self.ops), payment, available_at=self.now + delay_s)

    @precondition(lambda self: self.ops)
    @rule(data=st.data())
    def enqueue_again(self, data: st.DataObject) -> None:
        op_id = data.draw(st.sampled_from(sorted(self.ops)))
        with self.database.transaction() as conn:
            row = self.box.enqueue(conn, op_id, self.ops[op_id].payment, "capture", {"n": 1}, 0)
        assert row.attempts == self.ops[op_id].attempts

    @rule(worker=st.sampled_from(MODEL_WORKERS), limit=st.integers(1, 3))
    def claim(self, worker: str, limit: int) -> None:
        candidates = [op_id for op_id in self.ops if self.ready(op_id)][:limit]
        with self.database.transaction() as conn:
            before = self.box.list_rows(conn)
            taken = self.box.claim(conn, worker, self.now, limit)

        for row in taken.rows:
            _assert_runs_in_payment_order(row, before)
        expected = []
        for op_id in candidates:
            op = self.ops[op_id]
            if op.status == OutboxStatus.IN_FLIGHT and op.attempts >= MODEL_POLICY.attempts_max:
                op.status, op.lease_until = OutboxStatus.DEAD, None
                continue
            op.status, op.holder = OutboxStatus.IN_FLIGHT, worker
            op.attempts += 1
            op.lease_until = self.now + MODEL_POLICY.lease_s
            self.held[worker][op_id] = op.lease_until
            expected.append(op_id)
        assert [row.op_id for row in taken.rows] == expected

    @precondition(lambda self: self.held_pairs())
    @rule(data=st.data())
    def complete(self, data: st.DataObject) -> None:
        worker, op_id = data.draw(st.sampled_from(self.held_pairs()))
        del self.held[worker][op_id]
        op = self.ops[op_id]
        with self.database.transaction() as conn:
            if op.status == OutboxStatus.IN_FLIGHT and op.holder == worker:
                self.box.complete(conn, op_id, worker, {"ok": 1})
                op.status, op.lease_until = OutboxStatus.COMPLETED, None
                return
            with pytest.raises(NotLeaseHolder):
                self.box.complete(conn, op_id, worker, {"ok": 1})

    @precondition(lambda self: self.held_pairs())
    @rule(data=st.data(), retryable=st.booleans())
    def fail(self, data: st.DataObject, retryable: bool) -> None:
        worker, op_id = data.draw(st.sampled_from(self.held_pairs()))
        del self.held[worker][op_id]
        op = self.ops[op_id]
        with self.database.transaction() as conn:
            if op.status != OutboxStatus.IN_FLIGHT or op.holder != worker:
                with pytest.raises(NotLeaseHolder):
                    self.box.fail(conn, op_id, worker, "boom", retryable, self.now)
                return
            self.box.fail(conn, op_id, worker, "boom", retryable, self.now)
        op.lease_until = None
        if retryable and op.attempts < MODEL_POLICY.attempts_max:
            op.status = OutboxStatus.PENDING
            backoff_s = MODEL_POLICY.backoff_base_s * 2 ** (op.attempts - 1)
            op.available_at = self.now + min(MODEL_POLICY.backoff_max_s, backoff_s)
        else:
            op.status = OutboxStatus.DEAD

    @rule(worker=st.sampled_from(MODEL_WORKERS))
    def crash(self, worker: str) -> None:
        self.held[worker] = {}

    @rule(seconds=st.integers(1, 2 * MODEL_POLICY.lease_s))
    def tick(self, seconds: int) -> None:
        self.now += seconds

    @precondition(lambda self: any(op.status == OutboxStatus.DEAD for op in self.ops.values()))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        dead = sorted(op_id for op_id, op in self.ops.items() if op.status == OutboxStatus.DEAD)
        op_id = data.draw(st.sampled_from(dead))
        with self.database.transaction() as conn:
            self.box.retry(conn, op_id, self.now)
        op = self.ops[op_id]
        op.status, op.attempts, op.available_at = OutboxStatus.PENDING, 0, self.now

    @invariant()
    def no_operation_is_held_under_two_live_leases(self) -> None:
        for op_id in self.ops:
            live = [w for w, ops in self.held.items() if ops.get(op_id, self.now) > self.now]
            assert len(live) <= 1, (op_id, live)

    @invariant()
    def database_matches_the_model_and_loses_nothing(self) -> None:
        with self.database.snapshot() as conn:
            rows = {row.op_id: row for row in self.box.list_rows(conn)}
        assert rows.keys() == self.ops.keys()
        for op_id, op in self.ops.items():
            assert _observed(rows[op_id]) == _expected(op), op_id
        for payment in MODEL_PAYMENTS:
            flying = [
                r.op_id
                for r in rows.values()
                if r.payment_key == payment and r.status == OutboxStatus.IN_FLIGHT
            ]
            assert len(flying) <= 1, flying

    def teardown(self) -> None:
        """Drain: with time moving on and one worker finishing everything, every operation
        ends completed or dead."""
        for _ in range(len(self.ops) + 1):
            self.now += MODEL_POLICY.lease_s + MODEL_POLICY.backoff_max_s
            with self.database.transaction() as conn:
                taken = self.box.claim(conn, "drainer", self.now, 1_000)
                for row in taken.rows:
                    self.box.complete(conn, row.op_id, "drainer", {"ok": 1})
        with self.database.snapshot() as conn:
            statuses = {row.status for row in self.box.list_rows(conn)}
        assert statuses <= {OutboxStatus.COMPLETED, OutboxStatus.DEAD}


def _assert_runs_in_payment_order(claimed: OutboxRow, before: list[OutboxRow]) -> None:
    """A pending operation starts only when every earlier one of its payment has ended and
    nothing else of its payment is in flight."""
    was = next(row for row in before if row.op_id == claimed.op_id)
    if was.status != OutboxStatus.PENDING:
        return  # an expired lease taken over: the same delivery, continued
    for row in before:
        if row.payment_key != claimed.payment_key or row.op_id == claimed.op_id:
            continue
        assert row.status != OutboxStatus.IN_FLIGHT, (claimed.op_id, row.op_id)
        if row.id < claimed.id:
            assert row.status in (OutboxStatus.COMPLETED, OutboxStatus.DEAD), row.op_id


def _observed(row: OutboxRow) -> tuple[object, ...]:
    flying = row.status == OutboxStatus.IN_FLIGHT
    return (
        row.status,
        row.attempts,
        row.available_at,
        row.claimed_by if flying else None,
        row.lease_until,
    )


def _expected(op: ModelOp) -> tuple[object, ...]:
    flying = op.status == OutboxStatus.IN_FLIGHT
    return (op.status, op.attempts, op.available_at, op.holder if flying else None, op.lease_until)


def test_random_worker_schedules_keep_leases_exclusive_order_per_payment_and_lose_nothing(
    database: Database,
) -> None:
    class Machine(OutboxModel):
        pass

    Machine.database = database
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=EXAMPLES_MAX,
            stateful_step_count=STEPS_MAX,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
