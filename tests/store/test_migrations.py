"""Opening and migrating the database, its transaction shapes, and the schema it ends up with."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Column, Integer, MetaData, Table, inspect, select, text
from sqlalchemy.exc import IntegrityError, StatementError

from engine.store.db import (
    MIGRATIONS_DIR,
    Database,
    UnsupportedDatabase,
    normalise_url,
    open_database,
    upgrade,
)
from engine.store.event_store import EventStore, NewEvent
from engine.store.schema import Amount, chain_binding, metadata

# Every table schema.py declares, plus Alembic's own; the newest migration is the head.
TABLES = {"alembic_version", *metadata.tables}
HEAD = ScriptDirectory(str(MIGRATIONS_DIR)).get_current_head()


def head_revision(database: Database) -> str | None:
    with database.engine.connect() as conn:
        return MigrationContext.configure(conn).get_current_revision()


def test_upgrade_creates_every_table_in_an_empty_database(db_url: str) -> None:
    database = open_database(db_url)
    try:
        assert set(inspect(database.engine).get_table_names()) == set()
        upgrade(db_url)
        assert set(inspect(database.engine).get_table_names()) == TABLES
        assert head_revision(database) == HEAD
    finally:
        database.dispose()


def test_upgrade_at_head_is_a_no_op_that_keeps_the_data(db_url: str) -> None:
    upgrade(db_url)
    database = open_database(db_url)
    try:
        store = EventStore(database)
        with database.transaction() as conn:
            store.append(conn, "pay_1", 0, [NewEvent("authorized", {"amount": 1}, 1)])

        upgrade(db_url)

        assert head_revision(database) == HEAD
        with database.snapshot() as conn:
            assert [e.version for e in store.read(conn, "pay_1")] == [1]
    finally:
        database.dispose()


def test_migrated_database_matches_the_table_definitions(database: Database) -> None:
    with database.engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_migrations_and_their_version_table_land_in_the_configured_schema(
    database: Database,
) -> None:
    with database.engine.connect() as conn:
        schema = conn.execute(text("SELECT current_schema()")).scalar_one()
        tables = conn.execute(
            text("SELECT table_name FROM information_schema.tables WHERE table_schema = :s"),
            {"s": schema},
        ).scalars()
        assert set(tables) == TABLES
    assert schema != "public"


def test_chain_binding_holds_a_single_row(database: Database) -> None:
    binding = {
        "chain_id": 31337,
        "genesis_hash": bytes(32),
        "escrow_address": "0x" + "ab" * 20,
        "created_at": 1_700_000_000,
    }
    with database.transaction() as conn:
        conn.execute(chain_binding.insert().values(id=1, **binding))
    with pytest.raises(IntegrityError), database.transaction() as conn:
        conn.execute(chain_binding.insert().values(id=2, **binding))


def test_amount_columns_hold_uint256_values_exactly(database: Database) -> None:
    table = Table(
        "amounts_under_test",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("amount", Amount(), nullable=False),
    )
    amounts = [2**256 - 1, -(2**256 - 1), 2**63, 0, 1]
    with database.transaction() as conn:
        table.create(conn)
        conn.execute(table.insert(), [{"id": i, "amount": a} for i, a in enumerate(amounts)])
    with database.snapshot() as conn:
        stored = conn.execute(select(table.c.amount).order_by(table.c.id)).scalars().all()
    assert stored == amounts
    assert all(type(amount) is int for amount in stored)


@pytest.mark.parametrize("amount", [1.0, 2**256, True], ids=["float", "too-big", "bool"])
def test_amount_columns_refuse_anything_but_an_int_in_range(
    database: Database, amount: object
) -> None:
    table = Table("amounts_under_test", MetaData(), Column("amount", Amount(), primary_key=True))
    with database.transaction() as conn:
        table.create(conn)
    with pytest.raises(StatementError), database.transaction() as conn:
        conn.execute(table.insert().values(amount=amount))


def test_snapshot_keeps_seeing_the_state_of_its_first_read(database: Database) -> None:
    store = EventStore(database)
    with database.snapshot() as snapshot:
        assert store.read_all(snapshot, after_position=0, limit=10) == []
        with database.transaction() as conn:
            store.append(conn, "pay_1", 0, [NewEvent("authorized", {"amount": 1}, 1)])
        assert store.read_all(snapshot, after_position=0, limit=10) == []
    with database.snapshot() as snapshot:
        assert len(store.read_all(snapshot, after_position=0, limit=10)) == 1


def test_sqlite_runs_in_wal_mode_with_foreign_keys_enforced(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'nested' / 'settle.db'}"
    upgrade(url)
    database = open_database(url)
    try:
        with database.transaction() as conn:
            assert conn.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"
            assert conn.exec_driver_sql("PRAGMA foreign_keys").scalar_one() == 1
    finally:
        database.dispose()


@pytest.mark.parametrize(
    "url", ["postgresql://u@h/db", "postgres://u@h/db", "postgresql+psycopg://u@h/db"]
)
def test_postgresql_urls_are_pinned_to_psycopg_3(url: str) -> None:
    assert normalise_url(url).drivername == "postgresql+psycopg"


def test_unsupported_database_is_refused_without_echoing_the_password() -> None:
    with pytest.raises(UnsupportedDatabase) as raised:
        normalise_url("mysql://admin:hunter2@h/db")
    assert "hunter2" not in str(raised.value)
    assert raised.value.code == "unsupported_database"
