"""Opening and migrating the SQL database that holds the engine's state.

SQLite is the embedded default and PostgreSQL the backend for several workers (DESIGN §6).
Every difference between the two lives in this module, so the rest of `engine.store` is one
code path that reads and writes through SQLAlchemy Core.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from alembic import command
from alembic.config import Config
from psycopg import sql
from sqlalchemy import (
    Column,
    ColumnElement,
    Connection,
    Engine,
    LargeBinary,
    Table,
    any_,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    inspect,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError, ProgrammingError

from engine.store.redaction import redact_url

MIGRATIONS_DIR = Path(__file__).parent / "migrations"

# A writer waits this long for SQLite's single write lock before giving up with
# "database is locked"; long enough to ride out another writer's commit.
SQLITE_BUSY_TIMEOUT_MS = 5_000

# PostgreSQL advisory-lock keys; any fixed 64-bit numbers that no other tool on the same
# database uses. They spell "settle" in hex, plus a counter.
_APPEND_LOCK_KEY = 0x736574746C650001
_MIGRATION_LOCK_KEY = 0x736574746C650002

# Execution option that marks a connection as a read-only snapshot (see Database.snapshot).
_SNAPSHOT_OPTION = "settle_snapshot"
# conn.info key: the transaction that holds the append lock (PostgreSQL).
_APPEND_LOCK_HELD = "settle_append_lock_held"
# Alembic's bookkeeping table: present once `upgrade` has run.
_ALEMBIC_VERSION_TABLE = "alembic_version"


class UnsupportedDatabase(ValueError):
    """The URL names a database the engine does not run on."""

    code = "unsupported_database"


class DatabaseUrlInvalid(UnsupportedDatabase):
    """The URL cannot be parsed at all (a stray character, a port that is not a number)."""

    code = "database_url_invalid"


class DatabaseMissing(Exception):
    """The URL names a database that does not exist: a SQLite file that is not there (a typo,
    most often) or a PostgreSQL database the server does not have. Only `upgrade` creates one;
    every other opener refuses, so a typo never leaves an empty database behind."""

    code = "database_missing"


class DatabaseUnreachable(Exception):
    """The PostgreSQL server refused the connection, or is not there."""

    code = "database_unreachable"


class DatabaseNotMigrated(Exception):
    """The database exists but holds no engine schema yet."""

    code = "database_not_migrated"


def _upgrade_hint(url: str) -> str:
    hint = f"`settle db upgrade --db {redact_url(url)}`"
    return hint + (" (with your password)" if make_url(url).password else "")


def normalise_url(url: str) -> URL:
    """Parse a database URL and pin the driver the engine is tested with.

    A plain `postgresql://` (or Heroku-style `postgres://`) URL would make SQLAlchemy pick
    psycopg2, which is not installed; psycopg 3 is.
    """
    try:
        parsed = make_url(url)
    except (ArgumentError, ValueError):
        raise DatabaseUrlInvalid(
            "cannot read the database URL: use sqlite:///PATH or postgresql://USER@HOST/DB"
        ) from None
    if parsed.drivername in ("sqlite", "sqlite+pysqlite"):
        return parsed
    if parsed.drivername in ("postgresql", "postgres", "postgresql+psycopg"):
        return parsed.set(drivername="postgresql+psycopg")
    raise UnsupportedDatabase(
        f"unsupported database URL {redact_url(url)}: use sqlite:///PATH or "
        "postgresql://USER@HOST/DB"
    )


@dataclass(frozen=True, slots=True)
class Database:
    """An open database: the SQLAlchemy engine plus the transaction shapes the store needs."""

    engine: Engine

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
        """A read-write transaction, committed when the block exits without an exception.

        On SQLite it starts with BEGIN IMMEDIATE: taking the single write lock up front makes a
        second writer wait (busy timeout) instead of failing when it upgrades a read lock.
        """
        with self.engine.begin() as conn:
            yield conn

    @contextmanager
    def snapshot(self) -> Iterator[Connection]:
        """A read-only transaction that sees one consistent state of the whole database.

        Audits and replays read many rows in several statements; under PostgreSQL's default
        READ COMMITTED a concurrent append could land between two of them.
        """
        with self.engine.connect() as conn:
            conn.execution_options(**{_SNAPSHOT_OPTION: True})
            if self.dialect == "postgresql":
                conn.execution_options(isolation_level="REPEATABLE READ", postgresql_readonly=True)
            with conn.begin():
                yield conn

    def lock_for_append(self, conn: Connection) -> None:
        """Hold the event log's append lock until `conn`'s transaction ends.

        Appends commit one at a time so that global event positions become visible in order:
        a projection tailing `read_all(after_position)` can then never skip an event that a
        slower transaction commits later with a smaller position. SQLite already allows one
        writer at a time (BEGIN IMMEDIATE), PostgreSQL takes a transaction advisory lock.
        Callers keep event-writing transactions short for that reason.
        """
        if conn.get_execution_options().get(_SNAPSHOT_OPTION):
            raise RuntimeError("appending needs Database.transaction(), not a snapshot")
        if self.dialect == "postgresql":
            # Commands, the outbox and the event store each ask within one transaction; the
            # lock is held until it ends, so one round trip per transaction is enough. One
            # taken in a savepoint is not remembered: rolling the savepoint back releases it.
            transaction = conn.get_transaction()
            if transaction is None or conn.info.get(_APPEND_LOCK_HELD) is not transaction:
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _APPEND_LOCK_KEY})
                if not conn.in_nested_transaction():
                    conn.info[_APPEND_LOCK_HELD] = conn.get_transaction()

    def dispose(self) -> None:
        self.engine.dispose()


def insert_rows(
    conn: Connection,
    table: Table,
    rows: Sequence[Mapping[str, Any]],
    *,
    returning: Column[Any] | None = None,
) -> list[Any]:
    """Insert ``rows`` (each naming the same columns) and return the ``returning`` column's
    database-assigned values in row order (an empty list without it).

    On PostgreSQL the rows go in by COPY, with keys drawn from the column's sequence first: a
    multi-row INSERT of a thousand rows costs the driver a parse of a query as long as its
    parameters, and the server a plan for it, several times COPY's cost. Column types still
    convert each value as an INSERT would, and a constraint violation still raises the same
    SQLAlchemy error. SQLite takes one executemany INSERT, which is its fast path.
    """
    if not rows:
        return []
    if conn.dialect.name != "postgresql":
        if returning is None:
            conn.execute(insert(table), list(rows))
            return []
        inserted = conn.execute(
            insert(table).returning(returning, sort_by_parameter_order=True), list(rows)
        )
        return list(inserted.scalars())
    names = list(rows[0])
    keys: list[Any] = []
    if returning is not None:
        keys = list(
            conn.execute(
                text(
                    "SELECT nextval(pg_get_serial_sequence(:table, :column)) "
                    "FROM generate_series(1, :n)"
                ),
                {"table": table.name, "column": returning.name, "n": len(rows)},
            ).scalars()
        )
    columns = [*names, returning.name] if returning is not None else names
    converters = [_bind_processor(conn, table.c[name]) for name in columns]
    preparer = conn.dialect.identifier_preparer
    statement = (
        f"COPY {preparer.format_table(table)} "
        f"({', '.join(preparer.quote(name) for name in columns)}) FROM STDIN"
    )
    values: Iterable[list[Any]] = ([row[name] for name in names] for row in rows)
    if keys:
        values = ([*row, key] for row, key in zip(values, keys, strict=True))
    # Converted before COPY starts, so a value its column refuses aborts nothing half-sent.
    converted = [
        [
            value if convert is None or value is None else convert(value)
            for convert, value in zip(converters, row, strict=True)
        ]
        for row in values
    ]
    raw = conn.connection.driver_connection
    assert raw is not None
    dbapi_error = conn.dialect.loaded_dbapi.Error
    try:
        with raw.cursor() as cursor, cursor.copy(statement) as copy:
            for values in converted:
                copy.write_row(values)
    except dbapi_error as error:
        raise DBAPIError.instance(
            statement, None, error, dbapi_error, dialect=conn.dialect
        ) from error
    return keys


def update_rows(
    conn: Connection,
    table: Table,
    changes: Sequence[tuple[Mapping[str, Any], Mapping[str, Any]]],
) -> int:
    """Apply each (match, values) pair: the rows whose columns equal ``match`` take
    ``values``. Every pair names the same columns. Returns how many rows changed, which the
    caller compares with what it expected (a version moved under it, say).

    On PostgreSQL the pairs travel as one array per column and one UPDATE ... FROM unnest()
    joins them: one statement for the server to plan instead of one per row. SQLite takes
    an executemany UPDATE.
    """
    if not changes:
        return 0
    matched, changed = list(changes[0][0]), list(changes[0][1])
    if conn.dialect.name != "postgresql":
        c = table.c
        each = (
            update(table)
            .where(*(c[name] == bindparam(f"m_{name}") for name in matched))
            .values({name: bindparam(f"v_{name}", type_=c[name].type) for name in changed})
        )
        params = [
            {
                **{f"m_{name}": match[name] for name in matched},
                **{f"v_{name}": values[name] for name in changed},
            }
            for match, values in changes
        ]
        return conn.execute(each, params).rowcount
    columns = [("m", name, 0) for name in matched] + [("v", name, 1) for name in changed]
    preparer = conn.dialect.identifier_preparer
    target = preparer.format_table(table)
    arrays: dict[str, list[Any]] = {}
    casts: list[str] = []
    for side, name, index in columns:
        column = table.c[name]
        convert = _bind_processor(conn, column)
        arrays[f"{side}_{name}"] = [
            value if convert is None or value is None else convert(value)
            for value in (pair[index][name] for pair in changes)
        ]
        casts.append(f"CAST(:{side}_{name} AS {column.type.compile(dialect=conn.dialect)}[])")
    statement = text(
        f"UPDATE {target} SET "
        + ", ".join(f"{preparer.quote(name)} = v.v_{name}" for name in changed)
        + f" FROM unnest({', '.join(casts)}) AS v("
        + ", ".join(f"{side}_{name}" for side, name, _ in columns)
        + ") WHERE "
        + " AND ".join(f"{target}.{preparer.quote(name)} = v.m_{name}" for name in matched)
    )
    return conn.execute(statement, arrays).rowcount


def one_of(
    conn: Connection,
    columns: ColumnElement[Any] | Sequence[ColumnElement[Any]],
    values: Iterable[Any],
) -> ColumnElement[bool]:
    """``columns IN values`` for one column (values are scalars) or several (values are
    tuples in the columns' order), which on PostgreSQL binds one array per column.

    An IN list is a parameter per value, so every list length is a new statement: the driver
    parses it and the server plans it afresh (for 300 ids, 3.5 ms against 1.5 ms as
    ``= ANY(array)``, and twice the client CPU). Arrays keep the statement the same whatever
    the count; several columns match against the rows ``unnest`` makes of their arrays.
    """
    listed = list(values)
    if isinstance(columns, ColumnElement):
        if conn.dialect.name == "postgresql":
            return columns == any_(bindparam(None, listed, type_=ARRAY(columns.type)))
        return columns.in_(listed)
    if conn.dialect.name != "postgresql":
        return tuple_(*columns).in_(listed)
    arrays = [
        bindparam(None, [value[index] for value in listed], type_=ARRAY(column.type))
        for index, column in enumerate(columns)
    ]
    rows = func.unnest(*arrays).table_valued(*(f"k{i}" for i in range(len(columns))))
    return tuple_(*columns).in_(select(*rows.render_derived().c))


def notify(conn: Connection, channel: str) -> None:
    """Wake the ``Wakeup``s listening on ``channel`` once ``conn``'s transaction commits
    (PostgreSQL's NOTIFY: a rolled-back transaction wakes nobody). Nothing on SQLite, where
    the engine runs in one process that has nobody to wake."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, '')"), {"channel": channel})


class Wakeup:
    """Lets a worker wait for work instead of polling for it: ``wait`` returns as soon as a
    transaction that called ``notify`` on one of ``channels`` commits, or after the timeout.

    On PostgreSQL a connection of its own LISTENs; should it break, ``wait`` sleeps out its
    timeout and the next one connects again (the timeout is the worker's poll interval, so a
    lost wake-up only delays work). Elsewhere ``wait`` just sleeps.
    """

    def __init__(self, url: str, channels: Collection[str]) -> None:
        parsed = normalise_url(url)
        self._channels = sorted(channels)
        self._conninfo: str | None = None
        if parsed.get_backend_name() == "postgresql":
            self._conninfo = parsed.set(drivername="postgresql").render_as_string(
                hide_password=False
            )
        self._conn: psycopg.Connection[Any] | None = None

    def wait(self, timeout_s: float) -> bool:
        """Whether a notification came before ``timeout_s`` passed."""
        assert timeout_s >= 0, timeout_s
        if self._conninfo is None or not self._channels:
            time.sleep(timeout_s)
            return False
        try:
            conn = self._listening()
            return any(True for _ in conn.notifies(timeout=timeout_s, stop_after=1))
        except psycopg.OperationalError:
            self.close()
            time.sleep(timeout_s)
            return False

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def _listening(self) -> psycopg.Connection[Any]:
        if self._conn is None:
            assert self._conninfo is not None
            conn = psycopg.connect(self._conninfo, autocommit=True)
            for channel in self._channels:
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
            self._conn = conn
        return self._conn


def _bind_processor(conn: Connection, column: Column[Any]) -> Callable[[Any], Any] | None:
    """How an INSERT would convert the column's values for this database: the type's
    dialect form decides (a generic Numeric would turn big ints into floats). Bytes need no
    converting: the driver's wrapper only tags them as binary, which COPY and arrays do
    from the column's type, and wrapping every hash cost the mirror a twentieth of its CPU."""
    if isinstance(column.type, LargeBinary):
        return None
    return column.type.dialect_impl(conn.dialect).bind_processor(conn.dialect)


@contextmanager
def server_scratch_schema(server_url: str, prefix: str) -> Iterator[str]:
    """``scratch_schema`` on the PostgreSQL server at ``server_url``, for a caller that has
    only the URL (a benchmark that runs in a fresh schema and leaves nothing behind)."""
    admin = create_engine(normalise_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        with scratch_schema(admin, prefix) as url:
            yield url
    finally:
        admin.dispose()


@contextmanager
def scratch_schema(admin: Engine, prefix: str) -> Iterator[str]:
    """A URL into a new, uniquely named PostgreSQL schema, dropped with everything in it on
    the way out. ``admin`` is an AUTOCOMMIT engine on the server; the URL's search_path puts
    the tables (and Alembic's version table) inside the schema."""
    schema = f"{prefix}_{uuid.uuid4().hex}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    scoped = admin.url.update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield scoped.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def open_database(url: str, *, create: bool = True) -> Database:
    """Open `url` (SQLite file or PostgreSQL); the schema must be migrated with `upgrade`.

    A PostgreSQL server is asked once here, so a wrong URL fails now with DatabaseMissing or
    DatabaseUnreachable rather than as a driver error in the middle of a command. Without
    `create`, a SQLite file that is not there is DatabaseMissing instead of a new empty file
    (and folder): read-only commands must not leave a database behind a typo'd path.
    """
    parsed = normalise_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = _sqlite_path(parsed)
        if not create and path is not None and not path.is_file():
            raise DatabaseMissing(
                f"no SQLite database at {path}: check --db, or create one with {_upgrade_hint(url)}"
            )
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        return Database(_sqlite_engine(parsed))
    engine = create_engine(parsed)
    try:
        with engine.connect():
            pass
    except OperationalError as error:
        engine.dispose()
        raise _connection_error(url, parsed, error) from None
    return Database(engine)


def open_migrated(url: str) -> Database:
    """Open an existing database that holds the engine's schema, creating nothing: what the
    read-only commands (audit, outbox list, reconcile, replay) open."""
    database = open_database(url, create=False)
    try:
        with database.snapshot() as conn:
            migrated = inspect(conn).has_table(_ALEMBIC_VERSION_TABLE)
    except BaseException:
        database.dispose()
        raise
    if not migrated:
        database.dispose()
        raise DatabaseNotMigrated(
            f"{redact_url(url)} holds no engine schema yet: run {_upgrade_hint(url)}"
        )
    return database


def create_postgresql_database(url: str) -> bool:
    """Create the PostgreSQL database `url` names, through the server's `postgres` database;
    False when it already exists (another upgrade may have raced us to it)."""
    parsed = normalise_url(url)
    assert parsed.get_backend_name() == "postgresql", "SQLite files are created on open"
    name = parsed.database
    if not name:
        raise DatabaseUrlInvalid(f"{redact_url(url)} names no database: add /NAME to the URL")
    admin = create_engine(parsed.set(database="postgres"), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            if conn.execute(
                text("SELECT 1 FROM pg_database WHERE datname = :name"), {"name": name}
            ).first():
                return False
            quoted = conn.dialect.identifier_preparer.quote(name)
            conn.execute(text(f"CREATE DATABASE {quoted}"))
        return True
    except OperationalError as error:
        raise _connection_error(url, parsed, error) from None
    except ProgrammingError as error:
        if "already exists" in str(error.orig):
            return False
        raise
    finally:
        admin.dispose()


def _sqlite_path(url: URL) -> Path | None:
    """The file a SQLite URL names; None for an in-memory database."""
    if not url.database or url.database == ":memory:":
        return None
    return Path(url.database)


def _connection_error(
    url: str, parsed: URL, error: OperationalError
) -> DatabaseMissing | DatabaseUnreachable:
    # psycopg reports a failed connection without a SQLSTATE; the server's FATAL message is
    # the only place that tells a missing database from a refused connection.
    message = str(error.orig or error)
    if f'database "{parsed.database}" does not exist' in message:
        return DatabaseMissing(
            f"the PostgreSQL server has no database {parsed.database!r}: check --db, or "
            f"create it with {_upgrade_hint(url)}"
        )
    first_line = message.strip().splitlines()[0]
    reason = first_line.rsplit("failed: ", 1)[-1].strip()
    return DatabaseUnreachable(
        f"cannot connect to PostgreSQL at {redact_url(url)} ({reason}): check that the server "
        "runs and that --db names its host, port and user"
    )


def upgrade(url: str) -> None:
    """Migrate the database at `url` to the newest schema; a no-op when it is already there.
    A missing database is created first: a SQLite file (and its folder), or a PostgreSQL
    database on its server.

    Runs in one transaction (DDL is transactional on both backends), so a failed migration
    leaves the previous schema intact. Concurrent callers on PostgreSQL queue on an advisory
    lock instead of racing to create the same tables.
    """
    try:
        database = open_database(url)
    except DatabaseMissing:
        # Only PostgreSQL says so here (open creates a SQLite file): make the database, as
        # `settle db upgrade` promises, then open it.
        create_postgresql_database(url)
        database = open_database(url)
    try:
        with database.transaction() as conn:
            if database.dialect == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK_KEY}
                )
            config = Config()
            config.set_main_option("script_location", str(MIGRATIONS_DIR))
            config.attributes["connection"] = conn
            command.upgrade(config, "head")
    finally:
        database.dispose()


def _sqlite_engine(url: URL) -> Engine:
    engine = create_engine(url)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take BEGIN away from the sqlite3 module (it skips it before SELECT and DDL) so that
        # SQLAlchemy's transactions are real SQLite transactions; _on_begin emits it instead.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            # WAL lets readers run beside the one writer. synchronous stays at its FULL
            # default: NORMAL would trade the last commits on power loss for speed.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        mode = "DEFERRED" if conn.get_execution_options().get(_SNAPSHOT_OPTION) else "IMMEDIATE"
        conn.exec_driver_sql(f"BEGIN {mode}")

    return engine
