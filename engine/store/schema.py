"""The SQL tables of the engine, as SQLAlchemy Core definitions.

Migrations under `migrations/versions` create these tables; a test compares the migrated
database with this module so the two cannot drift apart.

Money columns hold integer minor units and use `Amount`: token amounts on chain are uint256
and exceed 2^63 (one ether is 10^18 wei), so BIGINT is too small. PostgreSQL stores them as
NUMERIC(78, 0), which holds every uint256 exactly; SQLite's NUMERIC would silently round
anything past 2^63 to a float, so there they are kept as decimal text. Python always sees
`int`. Sum such columns in Python, or in SQL on PostgreSQL only.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    Column,
    Dialect,
    ForeignKey,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.types import TypeDecorator, TypeEngine

# Deterministic constraint names, so that later migrations can drop or alter constraints by
# name on both backends.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = MetaData(naming_convention=NAMING_CONVENTION)

HASH_BYTES = 32
STREAM_ID_LENGTH_MAX = 200
KIND_LENGTH_MAX = 100
ADDRESS_LENGTH = 42  # "0x" and 40 hex digits, EIP-55 checksummed

# Amounts are deltas as well as balances, so both signs of a uint256 magnitude fit.
AMOUNT_DIGITS = 78
AMOUNT_MAGNITUDE_LIMIT = 2**256


class Amount(TypeDecorator[int]):
    """An integer amount of minor units up to a uint256 in magnitude (see module docstring)."""

    impl = Numeric(AMOUNT_DIGITS, 0)
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> TypeEngine[Any]:
        if dialect.name == "sqlite":
            return dialect.type_descriptor(String(AMOUNT_DIGITS + 1))  # sign and digits
        return dialect.type_descriptor(Numeric(AMOUNT_DIGITS, 0))

    def process_bind_param(self, value: int | None, dialect: Dialect) -> object:
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"amounts are int minor units, not {type(value).__name__}")
        if not -AMOUNT_MAGNITUDE_LIMIT < value < AMOUNT_MAGNITUDE_LIMIT:
            raise ValueError("amount exceeds a uint256 in magnitude")
        return str(value) if dialect.name == "sqlite" else value

    def process_result_value(self, value: object, dialect: Dialect) -> int | None:
        return None if value is None else int(str(value))


# One row per stream; its version is what optimistic concurrency compares against, its
# head_hash is where the next event's hash chain continues.
streams = Table(
    "streams",
    metadata,
    Column("stream_id", String(STREAM_ID_LENGTH_MAX), primary_key=True),
    Column("version", Integer, nullable=False),
    Column("head_hash", LargeBinary(HASH_BYTES), nullable=False),
    CheckConstraint("version >= 1", name="version_positive"),
)

# The append-only log. `position` orders all events globally (projections and replay read by
# it); (stream_id, version) orders one stream. `payload` is canonical JSON text rather than a
# JSON/JSONB column because the hash covers its exact bytes, which JSONB would re-format.
events = Table(
    "events",
    metadata,
    Column(
        "position",
        # SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    ),
    Column(
        "stream_id",
        String(STREAM_ID_LENGTH_MAX),
        ForeignKey("streams.stream_id"),
        nullable=False,
    ),
    Column("version", Integer, nullable=False),
    Column("kind", String(KIND_LENGTH_MAX), nullable=False),
    Column("payload", Text, nullable=False),
    Column("occurred_at", BigInteger, nullable=False),  # unix seconds
    Column("hash", LargeBinary(HASH_BYTES), nullable=False),
    Column("prev_hash", LargeBinary(HASH_BYTES), nullable=False),
    UniqueConstraint("stream_id", "version"),
    CheckConstraint("version >= 1", name="version_positive"),
    # Never hand out a position twice, even if the newest row were removed.
    sqlite_autoincrement=True,
)

# Which chain and escrow this database belongs to, so an engine pointed at the wrong RPC URL
# refuses to start instead of mixing two chains' state. At most one row (id = 1).
chain_binding = Table(
    "chain_binding",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("chain_id", BigInteger, nullable=False),
    Column("genesis_hash", LargeBinary(HASH_BYTES), nullable=False),
    Column("escrow_address", String(ADDRESS_LENGTH), nullable=False),
    Column("created_at", BigInteger, nullable=False),  # unix seconds
    CheckConstraint("id = 1", name="single_row"),
)
