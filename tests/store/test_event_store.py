"""The event store: append-only streams, optimistic concurrency, and a verifiable hash chain.

Every test runs on SQLite and on PostgreSQL (see conftest.py).
"""

from __future__ import annotations

import threading
import uuid
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from engine.store.db import Database
from engine.store.event_store import (
    GENESIS_HASH,
    PAYLOAD_INT_MAGNITUDE_LIMIT,
    ChainBreak,
    ConcurrencyConflict,
    EventStore,
    InvalidEvent,
    Json,
    NewEvent,
    Payload,
    chain_hash,
)

UINT256_MAX = 2**256 - 1


def authorized(amount: int, at: int = 1_700_000_000) -> NewEvent:
    return NewEvent("authorized", {"amount": amount, "currency": "USDC"}, at)


def seed(database: Database, store: EventStore, stream_id: str, count: int) -> None:
    with database.transaction() as conn:
        store.append(conn, stream_id, 0, [authorized(100 + n) for n in range(count)])


def test_appended_events_read_back_exactly_with_versions_and_positions(
    database: Database, event_store: EventStore
) -> None:
    new = [
        NewEvent("authorized", {"amount": UINT256_MAX, "legs": [{"to": "mer_1", "ok": True}]}, 7),
        NewEvent("captured", {"amount": -5, "note": "café ✓"}, 8),
    ]
    with database.transaction() as conn:
        appended = event_store.append(conn, "pay_1", 0, new)
    with database.snapshot() as conn:
        read = event_store.read(conn, "pay_1")

    assert read == appended
    assert [e.version for e in read] == [1, 2]
    assert read[0].position < read[1].position
    assert [(e.kind, e.payload, e.occurred_at) for e in read] == [
        (n.kind, n.payload, n.occurred_at) for n in new
    ]
    assert read[0].prev_hash == GENESIS_HASH
    assert read[1].prev_hash == read[0].hash


def test_append_continues_the_stream_from_its_expected_version(
    database: Database, event_store: EventStore
) -> None:
    seed(database, event_store, "pay_1", 2)
    with database.transaction() as conn:
        (third,) = event_store.append(conn, "pay_1", 2, [NewEvent("refunded", {"amount": 3}, 9)])

    with database.snapshot() as conn:
        first, second = event_store.read(conn, "pay_1", from_version=0)[:2]
        assert event_store.read(conn, "pay_1", from_version=2) == [third]
    assert third.version == 3
    assert third.prev_hash == second.hash
    assert third.hash == chain_hash(second.hash, "pay_1", 3, "refunded", {"amount": 3}, 9)
    assert first.version == 1


def test_read_all_pages_through_every_stream_in_position_order(
    database: Database, event_store: EventStore
) -> None:
    for stream_id in ("pay_a", "pay_b", "pay_c"):
        seed(database, event_store, stream_id, 3)

    pages: list[list[int]] = []
    after = 0
    with database.snapshot() as conn:
        while page := event_store.read_all(conn, after_position=after, limit=4):
            pages.append([e.position for e in page])
            after = page[-1].position

    positions = [p for page in pages for p in page]
    assert [len(page) for page in pages] == [4, 4, 1]
    assert positions == sorted(positions)
    assert len(set(positions)) == 9


def test_stale_expected_version_raises_conflict_and_writes_nothing(
    database: Database, event_store: EventStore
) -> None:
    seed(database, event_store, "pay_1", 2)
    with database.transaction() as conn:
        with pytest.raises(ConcurrencyConflict) as raised:
            event_store.append(conn, "pay_1", 1, [authorized(1)])
        # The transaction is still usable: the conflict wrote nothing that must be undone.
        event_store.append(conn, "pay_2", 0, [authorized(2)])

    assert raised.value.code == "conflict"
    assert (raised.value.expected_version, raised.value.actual_version) == (1, 2)
    with database.snapshot() as conn:
        assert [e.version for e in event_store.read(conn, "pay_1")] == [1, 2]
        assert [e.version for e in event_store.read(conn, "pay_2")] == [1]
        assert event_store.verify(conn).ok


def test_creating_a_stream_that_exists_raises_conflict(
    database: Database, event_store: EventStore
) -> None:
    seed(database, event_store, "pay_1", 1)
    with database.transaction() as conn, pytest.raises(ConcurrencyConflict):
        event_store.append(conn, "pay_1", 0, [authorized(1)])


def race_appends(
    database: Database, store: EventStore, expected_version: int, racers: int
) -> list[str]:
    """Start `racers` transactions at once, each appending two events at `expected_version`."""
    start = threading.Barrier(racers)

    def race(racer: int) -> str:
        legs = [NewEvent("captured", {"racer": racer, "leg": leg}, 1) for leg in (1, 2)]
        start.wait()
        try:
            with database.transaction() as conn:
                store.append(conn, "pay_race", expected_version, legs)
        except ConcurrencyConflict as conflict:
            return conflict.code
        return "won"

    with ThreadPoolExecutor(racers) as pool:
        return list(pool.map(race, range(racers)))


def test_racing_appends_with_the_same_expected_version_let_exactly_one_win(
    database: Database, event_store: EventStore
) -> None:
    rounds = 5
    for round_number in range(rounds):
        outcomes = race_appends(database, event_store, 2 * round_number, racers=2)
        assert sorted(outcomes) == ["conflict", "won"]

    with database.snapshot() as conn:
        stored = event_store.read(conn, "pay_race")
        audit = event_store.verify(conn)
    assert [e.version for e in stored] == list(range(1, 2 * rounds + 1))
    for leg_1, leg_2 in zip(stored[::2], stored[1::2], strict=True):
        assert leg_1.payload["racer"] == leg_2.payload["racer"], "a loser's event was written"
    assert audit.ok


def test_events_roll_back_with_the_callers_transaction(
    database: Database, event_store: EventStore
) -> None:
    class CommandFailed(Exception):
        pass

    with pytest.raises(CommandFailed), database.transaction() as conn:
        event_store.append(conn, "pay_1", 0, [authorized(1)])
        raise CommandFailed

    with database.snapshot() as conn:
        assert event_store.read(conn, "pay_1") == []
        assert event_store.read_all(conn, after_position=0, limit=10) == []
    seed(database, event_store, "pay_1", 1)


def test_append_inside_a_read_only_snapshot_is_refused(
    database: Database, event_store: EventStore
) -> None:
    with database.snapshot() as conn, pytest.raises(RuntimeError, match="transaction"):
        event_store.append(conn, "pay_1", 0, [authorized(1)])


def test_verify_accepts_an_untouched_store(database: Database, event_store: EventStore) -> None:
    seed(database, event_store, "pay_a", 3)
    seed(database, event_store, "pay_b", 1)
    with database.transaction() as conn:
        event_store.append(conn, "pay_a", 3, [authorized(9)])

    with database.snapshot() as conn:
        audit = event_store.verify(conn)
    assert (audit.ok, audit.streams, audit.events, audit.first_bad) == (True, 2, 5, None)


def test_verify_reports_stream_and_version_of_an_edited_payload(
    database: Database, event_store: EventStore
) -> None:
    seed(database, event_store, "pay_a", 3)
    seed(database, event_store, "pay_b", 3)
    with database.transaction() as conn:
        conn.execute(
            text("UPDATE events SET payload = :payload WHERE stream_id = 'pay_b' AND version = 2"),
            {"payload": '{"amount":1000000,"currency":"USDC"}'},
        )

    with database.snapshot() as conn:
        audit = event_store.verify(conn)
    assert not audit.ok
    assert audit.first_bad == ChainBreak("pay_b", 2, "hash does not match the event's content")
    assert (audit.streams, audit.events) == (2, 6)


def test_verify_catches_an_edit_whose_own_hash_was_recomputed(
    database: Database, event_store: EventStore
) -> None:
    seed(database, event_store, "pay_a", 3)
    with database.snapshot() as conn:
        second = event_store.read(conn, "pay_a")[1]
    forged: Payload = {"amount": 1, "currency": "USDC"}
    forged_hash = chain_hash(second.prev_hash, "pay_a", 2, second.kind, forged, second.occurred_at)
    with database.transaction() as conn:
        conn.execute(
            text(
                "UPDATE events SET payload = :p, hash = :h"
                " WHERE stream_id = 'pay_a' AND version = 2"
            ),
            {"p": '{"amount":1,"currency":"USDC"}', "h": forged_hash},
        )

    with database.snapshot() as conn:
        bad = event_store.verify(conn).first_bad
    assert bad is not None
    assert (bad.stream_id, bad.version) == ("pay_a", 3)
    assert "prev_hash" in bad.reason


def test_verify_catches_a_deleted_last_event(database: Database, event_store: EventStore) -> None:
    seed(database, event_store, "pay_a", 3)
    with database.transaction() as conn:
        conn.execute(text("DELETE FROM events WHERE stream_id = 'pay_a' AND version = 3"))

    with database.snapshot() as conn:
        bad = event_store.verify(conn).first_bad
    assert bad is not None
    assert (bad.stream_id, bad.version) == ("pay_a", 3)
    assert "stream head" in bad.reason


@pytest.mark.parametrize(
    "payload",
    [
        {"amount": 1.5},
        {"legs": [{"to": "mer_1", "amount": 10.0}]},
        {"fee": float("nan")},
    ],
    ids=["top-level", "nested", "nan"],
)
def test_floats_anywhere_in_a_payload_are_rejected_and_nothing_is_written(
    database: Database, event_store: EventStore, payload: dict[str, object]
) -> None:
    with database.transaction() as conn:
        with pytest.raises(InvalidEvent, match="float") as raised:
            event_store.append(conn, "pay_1", 0, [authorized(1), NewEvent("x", payload, 1)])  # type: ignore[arg-type]
        assert raised.value.code == "invalid_event"

    with database.snapshot() as conn:
        assert event_store.read(conn, "pay_1") == []
        assert event_store.verify(conn).streams == 0


@pytest.mark.parametrize(
    "payload",
    [
        {"reason": None},
        {"pair": (1, 2)},
        {"amount": Decimal("1")},
        {"raw": b"\x00"},
        {"by_id": {1: "a"}},
        {"amount": PAYLOAD_INT_MAGNITUDE_LIMIT},
        {"text": "\ud800"},
    ],
    ids=["null", "tuple", "decimal", "bytes", "int-key", "int-too-big", "lone-surrogate"],
)
def test_values_outside_plain_json_are_rejected(
    database: Database, event_store: EventStore, payload: dict[object, object]
) -> None:
    with database.transaction() as conn, pytest.raises(InvalidEvent):
        event_store.append(conn, "pay_1", 0, [NewEvent("x", payload, 1)])  # type: ignore[arg-type]


json_values = st.recursive(
    st.integers(min_value=-UINT256_MAX, max_value=UINT256_MAX) | st.booleans() | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(
    max_examples=50,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(payloads=st.lists(st.dictionaries(st.text(max_size=8), json_values), min_size=1, max_size=3))
def test_any_plain_json_payload_round_trips_and_verifies(
    database: Database, event_store: EventStore, payloads: list[dict[str, Json]]
) -> None:
    stream_id = f"pay_{uuid.uuid4().hex}"
    with database.transaction() as conn:
        appended = event_store.append(
            conn, stream_id, 0, [NewEvent("noted", payload, 1) for payload in payloads]
        )
    with database.snapshot() as conn:
        assert [e.payload for e in event_store.read(conn, stream_id)] == payloads
        assert event_store.read(conn, stream_id) == appended
        assert event_store.verify(conn).ok
