"""The saga store on both databases: statuses come back as their enums and the schema refuses
any other value, signals and timers take effect once, only a saga's head step is due, and a
locked saga holds off a second orchestrator on PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import text, update
from sqlalchemy.exc import DBAPIError, IntegrityError

from engine.store.db import Database
from engine.store.saga_store import (
    NewStep,
    SagaRecords,
    SagaStatus,
    SagaStore,
    StepRole,
    StepStatus,
)
from engine.store.schema import saga_steps, sagas

T0 = 1_700_000_000
CAPTURE = NewStep("capture", {"amount": 500, "fee_bps": 30})


@pytest.fixture
def store(database: Database) -> SagaStore:
    with database.transaction() as conn:
        SagaRecords(conn).insert_saga("sg_1", "direct_checkout", {"amount": 500}, T0)
    return SagaStore(database)


def test_a_step_status_round_trips_as_its_enum(store: SagaStore) -> None:
    with store.transaction() as records:
        records.append_steps("sg_1", [CAPTURE], StepRole.FORWARD, T0)
        records.update_step("sg_1", 1, T0 + 1, status=StepStatus.SUBMITTED, command_key="k_1")

    with store.snapshot() as records:
        step = records.step("sg_1", 1)

    assert step is not None
    assert (type(step.status), step.status) == (StepStatus, StepStatus.SUBMITTED)
    assert (type(step.role), step.role) == (StepRole, StepRole.FORWARD)
    assert (step.action, step.args, step.command_key) == (
        "capture",
        {"amount": 500, "fee_bps": 30},
        "k_1",
    )


@pytest.mark.parametrize("status", list(StepStatus))
def test_the_migrated_schema_takes_every_step_status(store: SagaStore, status: StepStatus) -> None:
    with store.transaction() as records:
        records.append_steps("sg_1", [CAPTURE], StepRole.FORWARD, T0)
        records.update_step("sg_1", 1, T0, status=status)

    with store.snapshot() as records:
        step = records.step("sg_1", 1)
    assert step is not None and step.status is status


@pytest.mark.parametrize("status", list(SagaStatus))
def test_the_migrated_schema_takes_every_saga_status(store: SagaStore, status: SagaStatus) -> None:
    outcome = "captured" if status == SagaStatus.COMPLETED else None
    with store.transaction() as records:
        records.set_status("sg_1", status, T0, outcome=outcome)

    with store.snapshot() as records:
        saga = records.saga("sg_1")
    assert saga is not None and (saga.status, saga.outcome) == (status, outcome)


def test_an_unknown_step_status_is_refused_by_the_store(store: SagaStore) -> None:
    with store.transaction() as records:
        records.append_steps("sg_1", [CAPTURE], StepRole.FORWARD, T0)

    with pytest.raises(ValueError, match="paused"), store.transaction() as records:
        records.update_step("sg_1", 1, T0, status="paused")  # type: ignore[arg-type]

    with store.snapshot() as records:
        step = records.step("sg_1", 1)
    assert step is not None and step.status is StepStatus.PENDING


def test_an_unknown_status_written_past_the_store_is_refused_by_the_schema(
    database: Database, store: SagaStore
) -> None:
    with store.transaction() as records:
        records.append_steps("sg_1", [CAPTURE], StepRole.FORWARD, T0)

    with pytest.raises(IntegrityError), database.transaction() as conn:
        conn.execute(update(saga_steps).values(status="paused"))
    with pytest.raises(IntegrityError), database.transaction() as conn:
        conn.execute(update(sagas).values(status="paused"))


def test_a_signal_is_recorded_once(store: SagaStore) -> None:
    with store.transaction() as records:
        first = records.record_signal("psp:evt_1", "sg_1", "captured", {"amount": 5}, T0)
        again = records.record_signal("psp:evt_1", "sg_1", "captured", {"amount": 5}, T0 + 1)

    assert (first, again) == (True, False)


def test_a_timer_set_again_keeps_its_first_due_time_and_fires_once(store: SagaStore) -> None:
    with store.transaction() as records:
        records.set_timer("sg_1", "expiry", T0 + 10)
        records.set_timer("sg_1", "expiry", T0 + 5)
    assert store.due_timers(T0 + 9, 10) == []
    assert store.due_timers(T0 + 10, 10) == [("sg_1", "expiry")]

    with store.transaction() as records:
        claims = [records.claim_timer("sg_1", "expiry"), records.claim_timer("sg_1", "expiry")]

    assert claims == [True, False]
    assert store.due_timers(T0 + 10, 10) == []


def test_only_the_first_open_step_of_a_saga_is_due(store: SagaStore) -> None:
    with store.transaction() as records:
        records.append_steps("sg_1", [CAPTURE, NewStep("void", {})], StepRole.FORWARD, T0)

    assert store.due_steps(T0, 10) == [("sg_1", 1)]
    assert store.anything_due(T0)

    with store.transaction() as records:
        records.update_step("sg_1", 1, T0, status=StepStatus.DONE)
        assert records.head_seq("sg_1") == 2
    assert store.due_steps(T0, 10) == [("sg_1", 2)]

    with store.transaction() as records:
        records.close_open_work("sg_1", T0)
        assert records.head_seq("sg_1") is None
    assert store.due_steps(T0, 10) == []
    assert not store.anything_due(T0)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_a_locked_saga_holds_off_a_second_orchestrator(
    database: Database, store: SagaStore
) -> None:
    with database.transaction() as first:
        assert SagaRecords(first).saga("sg_1", lock=True) is not None
        with pytest.raises(DBAPIError, match="lock"), database.transaction() as second:
            # Without FOR UPDATE the second read would not wait; fail fast rather than hang.
            second.execute(text("SET LOCAL lock_timeout = '200ms'"))
            SagaRecords(second).saga("sg_1", lock=True)
