"""``insert_rows`` and ``update_rows``, the store's bulk writes, on SQLite and PostgreSQL (COPY
and UPDATE ... FROM unnest there): keys in row order, column types applied, constraint errors
raised as SQLAlchemy's, and the count of rows an update matched. ``one_of``, the bulk look-up
(arrays on PostgreSQL), finds the same rows as an IN list whatever the count."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError

from engine.store.db import Database, insert_rows, one_of, update_rows
from engine.store.schema import events, ledger_accounts, streams

HASH = bytes(range(32))


def _stream(stream_id: str, version: int = 1) -> dict[str, object]:
    return {"stream_id": stream_id, "version": version, "head_hash": HASH}


def _event(stream_id: str, version: int, payload: str) -> dict[str, object]:
    return {
        "stream_id": stream_id,
        "version": version,
        "kind": "noted",
        "payload": payload,
        "occurred_at": 1_700_000_000,
        "hash": HASH,
        "prev_hash": b"\x00\\\n\t" * 8,  # bytes COPY must escape
    }


def test_inserted_rows_read_back_as_written_with_their_keys_in_row_order(
    database: Database,
) -> None:
    texts = ['{"a":"tab\\there"}', '{"b":"back\\\\slash"}', '{"c":"new\\nline"}']
    with database.transaction() as conn:
        insert_rows(conn, streams, [_stream("s-1", 3)])
        keys = insert_rows(
            conn,
            events,
            [_event("s-1", version, text) for version, text in enumerate(texts, 1)],
            returning=events.c.position,
        )
        stored = conn.execute(
            select(events.c.position, events.c.payload, events.c.prev_hash).order_by(
                events.c.version
            )
        ).all()

    assert keys == sorted(keys) and len(set(keys)) == 3
    assert [(row.position, row.payload, bytes(row.prev_hash)) for row in stored] == [
        (key, text, b"\x00\\\n\t" * 8) for key, text in zip(keys, texts, strict=True)
    ]


def test_no_rows_insert_nothing_and_return_no_keys(database: Database) -> None:
    with database.transaction() as conn:
        assert insert_rows(conn, events, [], returning=events.c.position) == []
        assert update_rows(conn, streams, []) == 0


def test_a_duplicate_key_raises_integrity_error_and_a_savepoint_keeps_the_rest(
    database: Database,
) -> None:
    with database.transaction() as conn:
        insert_rows(conn, streams, [_stream("s-1")])
        with pytest.raises(IntegrityError), conn.begin_nested():
            insert_rows(conn, streams, [_stream("s-2"), _stream("s-1")])
        insert_rows(conn, streams, [_stream("s-3")])
    with database.snapshot() as conn:
        kept = list(conn.execute(select(streams.c.stream_id).order_by(streams.c.stream_id)))
    assert [row.stream_id for row in kept] == ["s-1", "s-3"]


def test_column_types_convert_values_as_an_insert_would(database: Database) -> None:
    big = 2**255  # an Amount beyond any native integer column
    row = {
        "chain_id": 31337,
        "token": "0x" + "11" * 20,
        "kind": "escrow_held",
        "owner": "0x" + "22" * 20,
        "flags": 0,
        "debits_pending": big,
        "credits_pending": 0,
        "debits_posted": 0,
        "credits_posted": 0,
    }
    with database.transaction() as conn:
        (account_id,) = insert_rows(conn, ledger_accounts, [row], returning=ledger_accounts.c.id)
        changed = update_rows(
            conn, ledger_accounts, [({"id": account_id}, {"credits_posted": -big})]
        )
        stored = conn.execute(select(ledger_accounts)).one()
    assert changed == 1
    assert (stored.debits_pending, stored.credits_posted) == (big, -big)


def test_an_update_counts_only_the_rows_its_match_found(database: Database) -> None:
    with database.transaction() as conn:
        insert_rows(conn, streams, [_stream("s-1", 1), _stream("s-2", 1)])
        changed = update_rows(
            conn,
            streams,
            [
                ({"stream_id": "s-1", "version": 1}, {"version": 2, "head_hash": b"\x01" * 32}),
                ({"stream_id": "s-2", "version": 7}, {"version": 8, "head_hash": b"\x02" * 32}),
            ],
        )
        stored = dict(conn.execute(select(streams.c.stream_id, streams.c.version)).all())
    assert changed == 1
    assert stored == {"s-1": 2, "s-2": 1}


@pytest.mark.parametrize("count", [0, 1, 7, 600])
def test_one_of_finds_exactly_the_rows_listed_by_one_column(database: Database, count: int) -> None:
    with database.transaction() as conn:
        insert_rows(conn, streams, [_stream(f"s-{n}", n + 1) for n in range(1300)])
        wanted = [f"s-{n}" for n in range(0, 2 * count, 2)] + ["s-missing"]
        found = conn.execute(
            select(streams.c.stream_id).where(one_of(conn, streams.c.stream_id, wanted))
        ).scalars()
    assert sorted(found) == sorted(wanted[:-1])


def test_one_of_matches_tuples_of_several_columns_bytes_included(database: Database) -> None:
    heads = {f"s-{n}": bytes([n]) * 32 for n in range(10)}
    with database.transaction() as conn:
        insert_rows(
            conn,
            streams,
            [{"stream_id": sid, "version": 1, "head_hash": head} for sid, head in heads.items()],
        )
        wanted = [("s-1", heads["s-1"]), ("s-4", heads["s-4"]), ("s-5", heads["s-6"])]
        columns = (streams.c.stream_id, streams.c.head_hash)
        found = conn.execute(select(*columns).where(one_of(conn, columns, wanted))).all()
        none = conn.execute(select(*columns).where(one_of(conn, columns, []))).all()
    assert sorted((sid, bytes(head)) for sid, head in found) == wanted[:2]
    assert none == []
