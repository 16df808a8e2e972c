"""The transactional outbox on SQLite and PostgreSQL: atomic with the command's events,
idempotent, ordered per payment, leased, retried with backoff, dead-lettered and replayed."""

from __future__ import annotations

import json
from typing import Any

import pytest
from sqlalchemy import func, select

from engine.cli.outbox import cmd_outbox_list, cmd_outbox_retry
from engine.store.db import Database
from engine.store.event_store import ConcurrencyConflict, EventStore, NewEvent
from engine.store.outbox import (
    Claim,
    InvalidOperation,
    NotDeadLetter,
    NotLeaseHolder,
    OperationConflict,
    Outbox,
    OutboxLag,
    OutboxPolicy,
    OutboxRow,
    OutboxStatus,
    UnknownOperation,
)
from engine.store.schema import events, outbox

T0 = 1_700_000_000
POLICY = OutboxPolicy(lease_s=30, attempts_max=3, backoff_base_s=2, backoff_max_s=10)


@pytest.fixture
def box(database: Database) -> Outbox:
    return Outbox(database, POLICY)


def enqueue(
    database: Database,
    box: Outbox,
    op_id: str,
    payment_key: str = "pay_a",
    kind: str = "capture",
    available_at: int = T0,
) -> OutboxRow:
    with database.transaction() as conn:
        return box.enqueue(conn, op_id, payment_key, kind, {"amount": 100}, available_at)


def claim(
    database: Database, box: Outbox, worker_id: str = "w1", now: int = T0, limit: int = 10
) -> Claim:
    with database.transaction() as conn:
        return box.claim(conn, worker_id, now, limit)


def claimed_ids(claim: Claim) -> list[str]:
    return [row.op_id for row in claim.rows]


def complete(database: Database, box: Outbox, op_id: str, worker_id: str = "w1") -> OutboxRow:
    with database.transaction() as conn:
        return box.complete(conn, op_id, worker_id, {"tx": "0xab"})


def fail(
    database: Database,
    box: Outbox,
    op_id: str,
    now: int,
    retryable: bool = True,
    worker_id: str = "w1",
) -> OutboxRow:
    with database.transaction() as conn:
        return box.fail(conn, op_id, worker_id, "rpc timeout", retryable, now)


def get(database: Database, box: Outbox, op_id: str) -> OutboxRow:
    with database.snapshot() as conn:
        return box.get(conn, op_id)


def test_command_events_and_outbox_row_commit_in_one_transaction(
    database: Database, event_store: EventStore, box: Outbox
) -> None:
    with database.transaction() as conn:
        event_store.append(conn, "pay_a", 0, [NewEvent("capture_requested", {"amount": 5}, T0)])
        box.enqueue(conn, "op_1", "pay_a", "capture", {"amount": 5}, T0)

    with database.snapshot() as conn:
        assert [event.kind for event in event_store.read(conn, "pay_a")] == ["capture_requested"]
        row = box.get(conn, "op_1")
    assert (row.status, row.payload, row.attempts) == (OutboxStatus.PENDING, {"amount": 5}, 0)


def test_an_error_inside_the_transaction_writes_neither_events_nor_outbox_rows(
    database: Database, event_store: EventStore, box: Outbox
) -> None:
    with pytest.raises(RuntimeError), database.transaction() as conn:
        event_store.append(conn, "pay_a", 0, [NewEvent("capture_requested", {"amount": 5}, T0)])
        box.enqueue(conn, "op_1", "pay_a", "capture", {"amount": 5}, T0)
        raise RuntimeError("crash before commit")

    assert_nothing_written(database, box)


def test_a_losing_concurrent_command_leaves_no_outbox_row_behind(
    database: Database, event_store: EventStore, box: Outbox
) -> None:
    with database.transaction() as conn:
        event_store.append(conn, "pay_a", 0, [NewEvent("authorized", {"amount": 5}, T0)])
    with pytest.raises(ConcurrencyConflict), database.transaction() as conn:
        box.enqueue(conn, "op_1", "pay_a", "capture", {"amount": 5}, T0)
        event_store.append(conn, "pay_a", 0, [NewEvent("capture_requested", {"amount": 5}, T0)])

    with database.snapshot() as conn:
        assert len(event_store.read(conn, "pay_a")) == 1
    with pytest.raises(UnknownOperation), database.snapshot() as conn:
        box.get(conn, "op_1")


def assert_nothing_written(database: Database, box: Outbox) -> None:
    with database.snapshot() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 0
        assert conn.execute(select(func.count()).select_from(outbox)).scalar_one() == 0


def test_enqueueing_a_known_op_id_again_returns_the_first_row_unchanged(
    database: Database, box: Outbox
) -> None:
    first = enqueue(database, box, "op_1", available_at=T0)
    again = enqueue(database, box, "op_1", available_at=T0 + 60)

    assert again == first
    assert again.available_at == T0
    assert claimed_ids(claim(database, box, now=T0 + 60)) == ["op_1"]


def test_reusing_an_op_id_for_another_operation_raises_operation_conflict(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "op_1", kind="capture")

    with pytest.raises(OperationConflict) as raised, database.transaction() as conn:
        box.enqueue(conn, "op_1", "pay_a", "void", {"amount": 100}, T0)
    assert raised.value.code == "operation_conflict"


def test_a_payload_differing_only_in_true_versus_1_is_another_operation(
    database: Database, box: Outbox
) -> None:
    with database.transaction() as conn:
        box.enqueue(conn, "op_1", "pay_a", "capture", {"net": 1}, T0)

    with pytest.raises(OperationConflict), database.transaction() as conn:
        box.enqueue(conn, "op_1", "pay_a", "capture", {"net": True}, T0)


# Deliberately ill-typed: what a careless caller could pass.
UNSTORABLE: list[tuple[str, Any, Any]] = [
    ("op_1", {"amount": 1.5}, T0),  # float
    ("op_1", {"amount": None}, T0),  # null
    ("", {"amount": 1}, T0),
    ("op_" + "x" * 200, {"amount": 1}, T0),
    ("op_1", {"amount": 1}, -1),
    ("op_1", {"amount": 1}, True),
]


def test_enqueue_refuses_what_it_cannot_store_with_invalid_operation_and_writes_nothing(
    database: Database, box: Outbox
) -> None:
    for op_id, payload, available_at in UNSTORABLE:
        with pytest.raises(InvalidOperation) as raised, database.transaction() as conn:
            box.enqueue(conn, op_id, "pay_a", "capture", payload, available_at)
        assert raised.value.code == "invalid_operation"
    assert_nothing_written(database, box)


def test_operations_of_one_payment_run_one_at_a_time_in_order_while_others_proceed(
    database: Database, box: Outbox
) -> None:
    for op_id, payment in [("a1", "pay_a"), ("b1", "pay_b"), ("a2", "pay_a"), ("a3", "pay_a")]:
        enqueue(database, box, op_id, payment)

    assert claimed_ids(claim(database, box, "w1")) == ["a1", "b1"]
    assert claimed_ids(claim(database, box, "w2")) == []
    complete(database, box, "b1")
    assert claimed_ids(claim(database, box, "w2")) == []
    complete(database, box, "a1")
    assert claimed_ids(claim(database, box, "w2")) == ["a2"]
    complete(database, box, "a2", "w2")
    assert claimed_ids(claim(database, box, "w1")) == ["a3"]


def test_a_retry_in_backoff_holds_back_the_later_operations_of_its_payment(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "a1")
    enqueue(database, box, "a2")
    claim(database, box)
    fail(database, box, "a1", now=T0)

    assert claimed_ids(claim(database, box, now=T0 + 1)) == []
    assert claimed_ids(claim(database, box, now=T0 + 2)) == ["a1"]


def test_claim_leaves_operations_that_are_not_yet_available(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "later", "pay_a", available_at=T0 + 10)
    enqueue(database, box, "now", "pay_b", available_at=T0)

    assert claimed_ids(claim(database, box, now=T0)) == ["now"]
    assert claimed_ids(claim(database, box, now=T0 + 10)) == ["later"]


def test_claim_takes_at_most_limit_oldest_first(database: Database, box: Outbox) -> None:
    for n in range(5):
        enqueue(database, box, f"op_{n}", f"pay_{n}")

    assert claimed_ids(claim(database, box, limit=2)) == ["op_0", "op_1"]
    assert claimed_ids(claim(database, box, limit=10)) == ["op_2", "op_3", "op_4"]


def test_claim_can_take_only_some_kinds_and_groups_what_it_took_by_kind(
    database: Database, box: Outbox
) -> None:
    for op_id, payment, kind in [
        ("c1", "pay_a", "capture"),
        ("p1", "pay_b", "psp_refund"),
        ("v1", "pay_c", "void"),
        ("c2", "pay_d", "capture"),
    ]:
        enqueue(database, box, op_id, payment, kind)

    with database.transaction() as conn:
        taken = box.claim(conn, "relay", T0, 10, kinds={"capture", "void"})

    assert claimed_ids(taken) == ["c1", "v1", "c2"]
    assert {kind: [row.op_id for row in rows] for kind, rows in taken.by_kind().items()} == {
        "capture": ["c1", "c2"],
        "void": ["v1"],
    }
    assert all(row.lease_until == T0 + POLICY.lease_s for row in taken.rows)
    assert taken.lease_until == T0 + POLICY.lease_s


def test_an_expired_lease_hands_the_operation_to_another_worker(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "op_1")
    assert claimed_ids(claim(database, box, "crashed", now=T0)) == ["op_1"]

    assert claimed_ids(claim(database, box, "w2", now=T0 + POLICY.lease_s - 1)) == []
    taken = claim(database, box, "w2", now=T0 + POLICY.lease_s)
    assert claimed_ids(taken) == ["op_1"]
    assert (taken.rows[0].claimed_by, taken.rows[0].attempts) == ("w2", 2)

    with pytest.raises(NotLeaseHolder) as raised:
        complete(database, box, "op_1", "crashed")
    assert raised.value.code == "not_lease_holder"
    assert complete(database, box, "op_1", "w2").result == {"tx": "0xab"}
    with database.snapshot() as conn:
        assert [(e.event, e.worker_id) for e in box.history(conn, "op_1")] == [
            ("lease_expired", "crashed")
        ]


def test_completing_twice_raises_not_lease_holder(database: Database, box: Outbox) -> None:
    enqueue(database, box, "op_1")
    claim(database, box)
    complete(database, box, "op_1")

    with pytest.raises(NotLeaseHolder):
        complete(database, box, "op_1")


def test_completing_or_failing_an_unknown_operation_raises_unknown_operation(
    database: Database, box: Outbox
) -> None:
    with pytest.raises(UnknownOperation) as raised:
        complete(database, box, "op_missing")
    assert raised.value.code == "unknown_operation"
    with pytest.raises(UnknownOperation):
        fail(database, box, "op_missing", now=T0)


def test_retryable_failures_back_off_exponentially_up_to_the_cap(
    database: Database,
) -> None:
    box = Outbox(database, OutboxPolicy(attempts_max=6, backoff_base_s=2, backoff_max_s=10))
    enqueue(database, box, "op_1")
    now = T0
    delays = []
    for _ in range(5):
        assert claimed_ids(claim(database, box, now=now)) == ["op_1"]
        row = fail(database, box, "op_1", now=now)
        assert row.status == OutboxStatus.PENDING
        delays.append(row.available_at - now)
        now = row.available_at

    assert delays == [2, 4, 8, 10, 10]
    assert get(database, box, "op_1").last_error == "rpc timeout"


def test_backoff_doubles_from_the_base_and_stays_at_the_cap() -> None:
    policy = OutboxPolicy(backoff_base_s=1, backoff_max_s=300)

    assert [policy.backoff_s(n) for n in range(1, 12)] == [
        1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300
    ]  # fmt: skip
    assert policy.backoff_s(10**9) == 300


def test_the_last_allowed_attempt_failing_makes_a_dead_letter(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "op_1")
    now = T0
    for _ in range(POLICY.attempts_max - 1):
        claim(database, box, now=now)
        now = fail(database, box, "op_1", now=now).available_at
    claim(database, box, now=now)
    dead = fail(database, box, "op_1", now=now)

    assert (dead.status, dead.attempts) == (OutboxStatus.DEAD, POLICY.attempts_max)
    assert claimed_ids(claim(database, box, now=now + 10_000)) == []
    with database.snapshot() as conn:
        events = [entry.event for entry in box.history(conn, "op_1")]
    assert events == ["failed", "failed", "dead_lettered"]


def test_a_permanent_error_makes_a_dead_letter_at_once(database: Database, box: Outbox) -> None:
    enqueue(database, box, "op_1")
    claim(database, box)

    dead = fail(database, box, "op_1", now=T0, retryable=False)

    assert (dead.status, dead.attempts, dead.last_error) == (
        OutboxStatus.DEAD,
        1,
        "rpc timeout",
    )


def test_a_lease_running_out_on_the_last_attempt_makes_a_dead_letter(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "op_1")
    now = T0
    for _ in range(POLICY.attempts_max):
        assert claimed_ids(claim(database, box, now=now)) == ["op_1"]
        now += POLICY.lease_s

    assert claimed_ids(claim(database, box, now=now)) == []
    dead = get(database, box, "op_1")
    assert (dead.status, dead.attempts) == (OutboxStatus.DEAD, POLICY.attempts_max)
    assert dead.last_error is not None
    assert "lease expired" in dead.last_error


def test_a_dead_letter_does_not_hold_up_the_later_operations_of_its_payment(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "a1")
    enqueue(database, box, "a2")
    claim(database, box)
    fail(database, box, "a1", now=T0, retryable=False)

    assert claimed_ids(claim(database, box)) == ["a2"]


def test_retry_puts_a_dead_letter_back_to_pending_with_attempts_reset_and_records_it(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "op_1")
    claim(database, box)
    fail(database, box, "op_1", now=T0, retryable=False)

    with database.transaction() as conn:
        revived = box.retry(conn, "op_1", T0 + 100)

    assert (revived.status, revived.attempts, revived.available_at, revived.last_error) == (
        OutboxStatus.PENDING,
        0,
        T0 + 100,
        None,
    )
    with database.snapshot() as conn:
        history = box.history(conn, "op_1")
    assert [(entry.event, entry.attempts, entry.at) for entry in history] == [
        ("dead_lettered", 1, T0),
        ("retried", 1, T0 + 100),
    ]
    assert claimed_ids(claim(database, box, now=T0 + 100)) == ["op_1"]


def test_a_revived_dead_letter_waits_for_the_operation_in_flight_on_its_payment(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "a1")
    enqueue(database, box, "a2")
    claim(database, box)
    fail(database, box, "a1", now=T0, retryable=False)
    claim(database, box)  # a2
    with database.transaction() as conn:
        box.retry(conn, "a1", T0)

    assert claimed_ids(claim(database, box, "w2")) == []
    complete(database, box, "a2")
    assert claimed_ids(claim(database, box, "w2")) == ["a1"]


def test_retry_of_an_operation_that_is_not_dead_raises_not_dead_letter(
    database: Database, box: Outbox
) -> None:
    enqueue(database, box, "op_1")

    with pytest.raises(NotDeadLetter) as raised, database.transaction() as conn:
        box.retry(conn, "op_1", T0)
    assert raised.value.code == "not_dead_letter"


def test_lag_counts_operations_by_status_and_ages_the_oldest_undelivered(
    database: Database, box: Outbox
) -> None:
    with database.snapshot() as conn:
        assert box.lag(conn, T0) == OutboxLag(0, 0, 0, 0)
    enqueue(database, box, "done", "pay_a", available_at=T0)
    enqueue(database, box, "flying", "pay_b", available_at=T0 + 5)
    enqueue(database, box, "dead", "pay_c", available_at=T0 + 5)
    enqueue(database, box, "waiting", "pay_d", available_at=T0 + 20)
    claim(database, box, now=T0 + 10)
    complete(database, box, "done")
    fail(database, box, "dead", now=T0 + 10, retryable=False)

    with database.snapshot() as conn:
        lag = box.lag(conn, T0 + 30)
    assert lag == OutboxLag(pending=1, in_flight=1, dead=1, oldest_pending_age_s=25)
    assert lag.to_dict() == {
        "pending": 1,
        "in_flight": 1,
        "dead": 1,
        "oldest_pending_age_s": 25,
    }


def test_list_rows_filters_by_status_oldest_first(database: Database, box: Outbox) -> None:
    for op_id in ("op_1", "op_2", "op_3"):
        enqueue(database, box, op_id, f"pay_{op_id}")
    claim(database, box, limit=2)

    with database.snapshot() as conn:
        assert [row.op_id for row in box.list_rows(conn, OutboxStatus.IN_FLIGHT)] == [
            "op_1",
            "op_2",
        ]
        assert [row.op_id for row in box.list_rows(conn, limit=2, after_id=1)] == [
            "op_2",
            "op_3",
        ]


def test_outbox_list_command_prints_dead_letters_and_lag_as_json(
    db_url: str, database: Database, box: Outbox, capsys: pytest.CaptureFixture[str]
) -> None:
    enqueue(database, box, "op_ok", "pay_a")
    enqueue(database, box, "op_dead", "pay_b")
    claim(database, box)
    fail(database, box, "op_dead", now=T0, retryable=False)

    assert cmd_outbox_list(db_url, "dead", as_json=True) == 0

    report = json.loads(capsys.readouterr().out)
    assert [row["op_id"] for row in report["operations"]] == ["op_dead"]
    assert report["operations"][0]["last_error"] == "rpc timeout"
    assert report["truncated"] is False
    assert (report["lag"]["in_flight"], report["lag"]["dead"]) == (1, 1)


def test_outbox_list_command_refuses_an_unknown_status(db_url: str, database: Database) -> None:
    with pytest.raises(InvalidOperation, match="unknown status 'lost'"):
        cmd_outbox_list(db_url, "lost", as_json=True)


def test_outbox_retry_command_revives_a_dead_letter_and_refuses_anything_else(
    db_url: str, database: Database, box: Outbox
) -> None:
    enqueue(database, box, "op_dead")
    claim(database, box)
    fail(database, box, "op_dead", now=T0, retryable=False)

    assert cmd_outbox_retry(db_url, "op_dead") == 0
    assert get(database, box, "op_dead").status == OutboxStatus.PENDING
    with pytest.raises(NotDeadLetter):
        cmd_outbox_retry(db_url, "op_dead")
    with pytest.raises(UnknownOperation):
        cmd_outbox_retry(db_url, "op_missing")
