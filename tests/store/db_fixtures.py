"""Database fixtures: each test that asks for `db_url` runs once on SQLite, once on PostgreSQL.

Nothing here is specific to tests/store, so the module can move to tests/conftest.py as is.
PostgreSQL comes from TEST_DATABASE_URL. Every test gets its own freshly created schema there
(search_path points at it, so the tables and alembic_version land inside), dropped afterwards.
Without TEST_DATABASE_URL the PostgreSQL runs are skipped, unless REQUIRE_POSTGRES=1 (as in
CI), where a missing database must fail rather than quietly test half the backends.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from sqlalchemy import Engine, create_engine

from engine.store.db import Database, normalise_url, open_database, scratch_schema, upgrade
from engine.store.event_store import EventStore


def database_urls() -> list[pytest.ParameterSet]:
    """The backends to parametrize a database fixture with."""
    return [
        pytest.param("sqlite", id="sqlite"),
        pytest.param("postgresql", id="postgresql", marks=pytest.mark.postgres),
    ]


@pytest.fixture(scope="session")
def postgres_admin() -> Iterator[Engine]:
    base_url = os.environ.get("TEST_DATABASE_URL")
    if not base_url:
        if os.environ.get("REQUIRE_POSTGRES") == "1":
            pytest.fail("REQUIRE_POSTGRES=1 but TEST_DATABASE_URL not set")
        pytest.skip("TEST_DATABASE_URL not set")
    admin = create_engine(normalise_url(base_url), isolation_level="AUTOCOMMIT")
    yield admin
    admin.dispose()


@pytest.fixture(params=database_urls())
def db_url(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The URL of an empty database (no tables yet) on the parametrized backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('db') / 'settle.db'}"
        return
    admin: Engine = request.getfixturevalue("postgres_admin")
    with scratch_schema(admin, "test") as url:
        yield url


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    """An open database migrated to the newest schema."""
    upgrade(db_url)
    database = open_database(db_url)
    yield database
    database.dispose()


@pytest.fixture
def event_store(database: Database) -> EventStore:
    return EventStore(database)
