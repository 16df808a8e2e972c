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
    ForeignKeyConstraint,
    Index,
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


# transaction manager
# Signer lanes, the transactions sent through them, every signed broadcast attempt, and an
# append-only status history (engine/chain/txmanager/manager.py). A lane's next_nonce and the
# transaction row that takes it are written in one SQL transaction, so a nonce is handed out
# once and survives restarts.

TX_STATUSES = ("queued", "sent", "mined", "confirmed", "failed", "replaced")
IDEMPOTENCY_KEY_LENGTH_MAX = 200
TX_STATUS_LENGTH_MAX = 20
TX_EVENT_LENGTH_MAX = 40
ERROR_CODE_LENGTH_MAX = 100


def _row_id() -> Column[int]:
    # SQLite only auto-increments a column declared exactly INTEGER PRIMARY KEY.
    return Column(
        "id",
        BigInteger().with_variant(Integer(), "sqlite"),
        primary_key=True,
        autoincrement=True,
    )


tx_lanes = Table(
    "tx_lanes",
    metadata,
    Column("chain_id", BigInteger, primary_key=True),
    Column("address", String(ADDRESS_LENGTH), primary_key=True),
    Column("next_nonce", BigInteger, nullable=False),
    Column("created_at", BigInteger, nullable=False),  # unix seconds
    CheckConstraint("next_nonce >= 0", name="next_nonce_not_negative"),
)

# One row per operation sent on chain; idempotency_key is the caller's operation id.
# Fees and tx_hash are those of the newest attempt, or of the attempt that was mined.
txs = Table(
    "txs",
    metadata,
    _row_id(),
    Column("idempotency_key", String(IDEMPOTENCY_KEY_LENGTH_MAX), nullable=False, unique=True),
    Column("chain_id", BigInteger, nullable=False),
    Column("sender", String(ADDRESS_LENGTH), nullable=False),
    Column("nonce", BigInteger, nullable=False),
    Column("to_address", String(ADDRESS_LENGTH), nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("value", Amount, nullable=False),
    Column("gas_limit", BigInteger, nullable=False),
    Column("max_fee_per_gas", BigInteger, nullable=True),
    Column("max_priority_fee_per_gas", BigInteger, nullable=True),
    Column("status", String(TX_STATUS_LENGTH_MAX), nullable=False),
    Column("tx_hash", LargeBinary(HASH_BYTES), nullable=True),
    Column("attempts", Integer, nullable=False),
    Column("block_number", BigInteger, nullable=True),
    Column("block_hash", LargeBinary(HASH_BYTES), nullable=True),
    Column("receipt_status", Integer, nullable=True),
    Column("gas_used", BigInteger, nullable=True),
    Column("error_code", String(ERROR_CODE_LENGTH_MAX), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),  # unix seconds, as all *_at below
    Column("updated_at", BigInteger, nullable=False),
    Column("sent_at", BigInteger, nullable=True),
    ForeignKeyConstraint(["chain_id", "sender"], ["tx_lanes.chain_id", "tx_lanes.address"]),
    UniqueConstraint("chain_id", "sender", "nonce"),
    CheckConstraint(
        "status IN (" + ", ".join(f"'{status}'" for status in TX_STATUSES) + ")",
        name="status_known",
    ),
    CheckConstraint("nonce >= 0", name="nonce_not_negative"),
    CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    Index("ix_txs_lane_status", "chain_id", "sender", "status"),
    sqlite_autoincrement=True,
)

# Every signed transaction, written before it is broadcast: after a crash the hash is known
# and the outcome is found by looking it up, and a re-broadcast sends these exact bytes.
tx_attempts = Table(
    "tx_attempts",
    metadata,
    _row_id(),
    Column("tx_id", BigInteger, ForeignKey("txs.id"), nullable=False, index=True),
    Column("tx_hash", LargeBinary(HASH_BYTES), nullable=False, unique=True),
    Column("raw", LargeBinary, nullable=False),
    Column("max_fee_per_gas", BigInteger, nullable=False),
    Column("max_priority_fee_per_gas", BigInteger, nullable=False),
    Column("signed_at", BigInteger, nullable=False),
    Column("broadcast_at", BigInteger, nullable=True),  # None: outcome of the send unknown
    sqlite_autoincrement=True,
)

tx_history = Table(
    "tx_history",
    metadata,
    _row_id(),
    Column("tx_id", BigInteger, ForeignKey("txs.id"), nullable=False, index=True),
    Column("status", String(TX_STATUS_LENGTH_MAX), nullable=False),
    Column("event", String(TX_EVENT_LENGTH_MAX), nullable=False),
    Column("tx_hash", LargeBinary(HASH_BYTES), nullable=True),
    Column("detail", Text, nullable=False),
    Column("at", BigInteger, nullable=False),
    sqlite_autoincrement=True,
)


# indexer
# The escrow log indexer (engine/chain/indexer/log_indexer.py): a checkpoint per (chain,
# escrow), the hashes
# of the blocks it scanned (a bounded recent window, enough to find a reorg's fork point), every
# escrow log it read with the stage it reached, the notices it hands to its consumer in order,
# and each consumer's record of the notices it applied, written in the consumer's own
# transaction so that redelivered notices are applied once.

LOG_STAGES = ("pending", "confirmed", "removed")
LOG_STAGE_LENGTH_MAX = 10
LOG_EVENT_LENGTH_MAX = 40
CONSUMER_NAME_LENGTH_MAX = 100

# version grows with every write of the indexer's chain view: a second indexer running on the
# same checkpoint finds it moved and stops instead of interleaving its view with the first's.
indexer_checkpoints = Table(
    "indexer_checkpoints",
    metadata,
    _row_id(),
    Column("chain_id", BigInteger, nullable=False),
    Column("escrow_address", String(ADDRESS_LENGTH), nullable=False),
    Column("start_block", BigInteger, nullable=False),
    Column("scanned_through", BigInteger, nullable=False),  # start_block - 1 before the first scan
    Column("acknowledged_through", BigInteger, nullable=False),  # an indexer_notices.id, or 0
    Column("version", BigInteger, nullable=False),
    UniqueConstraint("chain_id", "escrow_address"),
    CheckConstraint("start_block >= 0", name="start_block_not_negative"),
    CheckConstraint("scanned_through >= start_block - 1", name="scanned_from_start"),
    CheckConstraint("acknowledged_through >= 0", name="acknowledged_not_negative"),
    sqlite_autoincrement=True,
)

indexer_blocks = Table(
    "indexer_blocks",
    metadata,
    Column("checkpoint_id", BigInteger, ForeignKey("indexer_checkpoints.id"), primary_key=True),
    Column("number", BigInteger, primary_key=True),
    Column("hash", LargeBinary(HASH_BYTES), nullable=False),
    Column("parent_hash", LargeBinary(HASH_BYTES), nullable=False),
)

# A log is one row for life: a reorg marks it removed, and if its block comes back (a chain
# that flips back) the same row is revived. topics holds the 32-byte topics concatenated.
indexer_logs = Table(
    "indexer_logs",
    metadata,
    _row_id(),
    Column("checkpoint_id", BigInteger, ForeignKey("indexer_checkpoints.id"), nullable=False),
    Column("block_number", BigInteger, nullable=False),
    Column("block_hash", LargeBinary(HASH_BYTES), nullable=False),
    Column("block_timestamp", BigInteger, nullable=False),  # unix seconds, the chain's clock
    Column("tx_hash", LargeBinary(HASH_BYTES), nullable=False),
    Column("log_index", Integer, nullable=False),
    Column("event", String(LOG_EVENT_LENGTH_MAX), nullable=False),
    Column("topics", LargeBinary, nullable=False),
    Column("data", LargeBinary, nullable=False),
    Column("stage", String(LOG_STAGE_LENGTH_MAX), nullable=False),
    UniqueConstraint("checkpoint_id", "block_hash", "log_index"),
    CheckConstraint(
        "stage IN (" + ", ".join(f"'{stage}'" for stage in LOG_STAGES) + ")",
        name="stage_known",
    ),
    Index("ix_indexer_logs_checkpoint_block", "checkpoint_id", "block_number"),
    sqlite_autoincrement=True,
)

# Append-only; the id orders delivery, and the checkpoint's acknowledged_through is the last id
# its consumer confirmed having applied.
indexer_notices = Table(
    "indexer_notices",
    metadata,
    _row_id(),
    Column("checkpoint_id", BigInteger, ForeignKey("indexer_checkpoints.id"), nullable=False),
    Column("log_id", BigInteger, ForeignKey("indexer_logs.id"), nullable=False),
    Column("stage", String(LOG_STAGE_LENGTH_MAX), nullable=False),
    CheckConstraint(
        "stage IN (" + ", ".join(f"'{stage}'" for stage in LOG_STAGES) + ")",
        name="stage_known",
    ),
    Index("ix_indexer_notices_checkpoint_id", "checkpoint_id", "id"),
    sqlite_autoincrement=True,
)

indexer_deliveries = Table(
    "indexer_deliveries",
    metadata,
    Column("consumer", String(CONSUMER_NAME_LENGTH_MAX), primary_key=True),
    Column("stage", String(LOG_STAGE_LENGTH_MAX), primary_key=True),
    Column("block_hash", LargeBinary(HASH_BYTES), primary_key=True),
    Column("tx_hash", LargeBinary(HASH_BYTES), primary_key=True),
    Column("log_index", Integer, primary_key=True),
)


# outbox
# The transactional outbox (engine/store/outbox.py): operations that an accepted command owes
# the outside world (a chain call, a PSP call), written in the command's SQL transaction and
# delivered at least once by relay workers. `id` orders operations: per payment_key they run
# strictly one after the other in id order. outbox_history records what is not on the row any
# more: each failure with its error, dead-lettering, lease expiries and operator retries.

OUTBOX_STATUSES = ("pending", "in_flight", "completed", "dead")
OUTBOX_HISTORY_EVENTS = ("failed", "dead_lettered", "lease_expired", "retried")
OUTBOX_KEY_LENGTH_MAX = 200  # op_id and payment_key
OUTBOX_STATUS_LENGTH_MAX = 20
OUTBOX_EVENT_LENGTH_MAX = 20
WORKER_ID_LENGTH_MAX = 100

outbox = Table(
    "outbox",
    metadata,
    _row_id(),
    Column("op_id", String(OUTBOX_KEY_LENGTH_MAX), nullable=False, unique=True),
    Column("payment_key", String(OUTBOX_KEY_LENGTH_MAX), nullable=False),
    Column("kind", String(KIND_LENGTH_MAX), nullable=False),
    Column("payload", Text, nullable=False),  # canonical JSON, as events.payload
    Column("status", String(OUTBOX_STATUS_LENGTH_MAX), nullable=False),
    Column("attempts", Integer, nullable=False),  # deliveries so far, crashed ones included
    # unix seconds, as all times below. due_at is when the operation first became due (lag is
    # measured from it); available_at moves later with each retry's backoff.
    Column("due_at", BigInteger, nullable=False),
    Column("available_at", BigInteger, nullable=False),
    Column("claimed_by", String(WORKER_ID_LENGTH_MAX), nullable=True),
    Column("lease_until", BigInteger, nullable=True),
    Column("last_error", Text, nullable=True),
    Column("result", Text, nullable=True),  # canonical JSON, set on completion
    # Rows of one atomic settlement share a group: the relay sends them in one atomic batch.
    Column("batch_group", String(OUTBOX_KEY_LENGTH_MAX), nullable=True),
    CheckConstraint(
        "status IN (" + ", ".join(f"'{status}'" for status in OUTBOX_STATUSES) + ")",
        name="status_known",
    ),
    CheckConstraint("attempts >= 0", name="attempts_not_negative"),
    CheckConstraint(
        "status <> 'in_flight' OR (claimed_by IS NOT NULL AND lease_until IS NOT NULL)",
        name="in_flight_has_lease",
    ),
    Index("ix_outbox_status_available_at", "status", "available_at"),
    Index("ix_outbox_payment_key_id", "payment_key", "id"),
    sqlite_autoincrement=True,
)

outbox_history = Table(
    "outbox_history",
    metadata,
    _row_id(),
    Column("outbox_id", BigInteger, ForeignKey("outbox.id"), nullable=False, index=True),
    Column("event", String(OUTBOX_EVENT_LENGTH_MAX), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("worker_id", String(WORKER_ID_LENGTH_MAX), nullable=True),
    Column("error", Text, nullable=True),
    Column("at", BigInteger, nullable=False),
    CheckConstraint(
        "event IN (" + ", ".join(f"'{event}'" for event in OUTBOX_HISTORY_EVENTS) + ")",
        name="event_known",
    ),
    sqlite_autoincrement=True,
)


# ledger
# The double-entry ledger (engine/store/ledger.py): accounts per (asset, kind, owner) with running
# totals, journal entries with their state, and the signed postings they are made of (a credit
# is positive, a debit negative). The postings are the record. The running totals exist so that
# an overdraft check reads one locked row instead of summing an account's history; the ledger's
# verify recomputes them from the postings. Tables come from a function so that replay can build
# the same ledger into scratch tables beside the live ones.

LEDGER_ACCOUNT_KINDS = (
    "payer",
    "escrow_held",
    "merchant_settled",
    "fees",
    "leg",
    "disputes",
    "refunds",
    "escrow_credits",
    "deferred_payouts",
)
LEDGER_ENTRY_STATES = ("pending", "posted", "voided")
LEDGER_ACCOUNT_KIND_LENGTH_MAX = 20
LEDGER_ACCOUNT_FLAGS_LIMIT = 4  # two flag bits, see engine/store/ledger_accounts.py
LEDGER_KEY_LENGTH_MAX = 200
LEDGER_ENTRY_KIND_LENGTH_MAX = 40
LEDGER_ENTRY_STATE_LENGTH_MAX = 10
PAYMENT_ID_LENGTH_MAX = 40


def define_ledger_tables(target: MetaData, prefix: str = "") -> tuple[Table, Table, Table]:
    """The ledger's accounts, entries and postings tables in `target`, named with `prefix`."""
    accounts = Table(
        f"{prefix}ledger_accounts",
        target,
        _row_id(),
        Column("chain_id", BigInteger, nullable=False),
        Column("token", String(ADDRESS_LENGTH), nullable=False),
        Column("kind", String(LEDGER_ACCOUNT_KIND_LENGTH_MAX), nullable=False),
        Column("owner", String(ADDRESS_LENGTH), nullable=False),  # "" for a pooled account
        Column("flags", Integer, nullable=False),
        Column("debits_pending", Amount, nullable=False),
        Column("credits_pending", Amount, nullable=False),
        Column("debits_posted", Amount, nullable=False),
        Column("credits_posted", Amount, nullable=False),
        UniqueConstraint("chain_id", "token", "kind", "owner"),
        CheckConstraint(
            "kind IN (" + ", ".join(f"'{kind}'" for kind in LEDGER_ACCOUNT_KINDS) + ")",
            name="kind_known",
        ),
        CheckConstraint(f"flags >= 0 AND flags < {LEDGER_ACCOUNT_FLAGS_LIMIT}", name="flags_known"),
        sqlite_autoincrement=True,
    )
    entries = Table(
        f"{prefix}ledger_entries",
        target,
        _row_id(),
        Column("idempotency_key", String(LEDGER_KEY_LENGTH_MAX), nullable=False, unique=True),
        Column("kind", String(LEDGER_ENTRY_KIND_LENGTH_MAX), nullable=False),
        Column("payment_id", String(PAYMENT_ID_LENGTH_MAX), nullable=True, index=True),
        Column("state", String(LEDGER_ENTRY_STATE_LENGTH_MAX), nullable=False),
        # An entry is reversed at most once, by a later entry that points back at it.
        Column(
            "reverses_entry_id",
            BigInteger,
            ForeignKey(f"{prefix}ledger_entries.id"),
            nullable=True,
            unique=True,
        ),
        Column("created_at", BigInteger, nullable=False),  # unix seconds, as posted_at, voided_at
        Column("posted_at", BigInteger, nullable=True),
        Column("voided_at", BigInteger, nullable=True),
        CheckConstraint(
            "state IN (" + ", ".join(f"'{state}'" for state in LEDGER_ENTRY_STATES) + ")",
            name="state_known",
        ),
        CheckConstraint(
            "(state = 'pending' AND posted_at IS NULL AND voided_at IS NULL)"
            " OR (state = 'posted' AND posted_at IS NOT NULL AND voided_at IS NULL)"
            " OR (state = 'voided' AND posted_at IS NULL AND voided_at IS NOT NULL)",
            name="state_times",
        ),
        sqlite_autoincrement=True,
    )
    postings = Table(
        f"{prefix}ledger_postings",
        target,
        _row_id(),
        Column(
            "entry_id",
            BigInteger,
            ForeignKey(f"{prefix}ledger_entries.id"),
            nullable=False,
            index=True,
        ),
        Column(
            "account_id",
            BigInteger,
            ForeignKey(f"{prefix}ledger_accounts.id"),
            nullable=False,
            index=True,
        ),
        Column("amount", Amount, nullable=False),  # credit > 0 > debit, never 0
        sqlite_autoincrement=True,
    )
    return accounts, entries, postings


ledger_accounts, ledger_entries, ledger_postings = define_ledger_tables(metadata)

# payments

PAYMENT_STATUS_LENGTH_MAX = 20
COMMAND_KIND_LENGTH_MAX = 20
COMMAND_STATUSES = ("accepted", "applied", "failed")
COMMAND_STATUS_LENGTH_MAX = 10

# The payment projection: one row per payment, rebuilt from its event stream. `version` is the
# stream version it reflects; `chain_seq` counts the escrow operations applied to the payment,
# which is the sequence number the escrow expects for the next one.
payments = Table(
    "payments",
    metadata,
    Column("id", String(PAYMENT_ID_LENGTH_MAX), primary_key=True),
    Column("chain_payment_id", LargeBinary(HASH_BYTES), nullable=False, unique=True),
    Column("terms_hash", LargeBinary(HASH_BYTES), nullable=False),
    Column("terms", Text, nullable=False),  # canonical JSON of PaymentTerms.to_dict()
    Column("status", String(PAYMENT_STATUS_LENGTH_MAX), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("authorized", Amount, nullable=False),
    Column("captured", Amount, nullable=False),
    Column("voided", Amount, nullable=False),
    Column("reclaimed", Amount, nullable=False),
    Column("refunded", Amount, nullable=False),
    Column("disputed", Amount, nullable=False),
    Column("version", Integer, nullable=False),
    Column("chain_seq", Integer, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    Index("ix_payments_status", "status"),
)

# Accepted payment commands under their idempotency key: a retry returns `outcome`. A command
# stays `accepted` while its escrow operation is on its way; one per payment at a time.
payment_commands = Table(
    "payment_commands",
    metadata,
    Column("idempotency_key", String(OUTBOX_KEY_LENGTH_MAX), primary_key=True),
    Column("payment_id", String(PAYMENT_ID_LENGTH_MAX), nullable=False),
    Column("kind", String(COMMAND_KIND_LENGTH_MAX), nullable=False),
    Column("request", Text, nullable=False),  # canonical JSON of the command's arguments
    Column("op_id", String(OUTBOX_KEY_LENGTH_MAX), nullable=False, unique=True),
    Column("status", String(COMMAND_STATUS_LENGTH_MAX), nullable=False),
    Column("outcome", Text, nullable=False),  # canonical JSON returned to the caller
    Column("error", Text, nullable=True),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint(
        "status IN (" + ", ".join(f"'{status}'" for status in COMMAND_STATUSES) + ")",
        name="status_known",
    ),
    Index("ix_payment_commands_payment_id_status", "payment_id", "status"),
)

# sagas
# A saga drives one payment through a flow (engine/saga/flows.py); its steps run one at a
# time in `seq` order, each a payment command under a key derived from (saga, seq, attempt).
# engine/store/saga_store.py reads and writes these tables; its status enums are checked
# against the tuples below at import.
SAGA_ID_LENGTH_MAX = 150
SAGA_FLOW_LENGTH_MAX = 40
SAGA_STATUSES = ("running", "compensating", "completed", "compensated", "manual_review")
SAGA_STATUS_LENGTH_MAX = 20
SAGA_OUTCOME_LENGTH_MAX = 40
SAGA_STEP_ACTION_LENGTH_MAX = 20
SAGA_STEP_ROLES = ("forward", "compensation")
SAGA_STEP_ROLE_LENGTH_MAX = 20
SAGA_STEP_STATUSES = ("pending", "submitted", "done", "failed", "canceled")
SAGA_STEP_STATUS_LENGTH_MAX = 10
SAGA_TIMER_NAME_LENGTH_MAX = 40
SAGA_TIMER_STATUSES = ("pending", "fired", "canceled")
SAGA_TIMER_STATUS_LENGTH_MAX = 10
SAGA_SIGNAL_ID_LENGTH_MAX = 200
SAGA_SIGNAL_NAME_LENGTH_MAX = 40


def _one_of(values: tuple[str, ...], column: str) -> str:
    return f"{column} IN (" + ", ".join(f"'{value}'" for value in values) + ")"


sagas = Table(
    "sagas",
    metadata,
    Column("id", String(SAGA_ID_LENGTH_MAX), primary_key=True),
    Column("flow", String(SAGA_FLOW_LENGTH_MAX), nullable=False),
    Column("status", String(SAGA_STATUS_LENGTH_MAX), nullable=False),
    Column("outcome", String(SAGA_OUTCOME_LENGTH_MAX), nullable=True),
    Column("payment_id", String(PAYMENT_ID_LENGTH_MAX), nullable=True),
    Column("context", Text, nullable=False),  # canonical JSON the flow keeps between events
    # The payment projection version the flow last looked at.
    Column("observed_version", Integer, nullable=False),
    Column("created_at", BigInteger, nullable=False),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint(_one_of(SAGA_STATUSES, "status"), name="status_known"),
    Index("ix_sagas_status", "status"),
    Index("ix_sagas_payment_id", "payment_id"),
)

saga_steps = Table(
    "saga_steps",
    metadata,
    Column("saga_id", String(SAGA_ID_LENGTH_MAX), primary_key=True),
    Column("seq", Integer, primary_key=True),
    Column("action", String(SAGA_STEP_ACTION_LENGTH_MAX), nullable=False),
    Column("args", Text, nullable=False),  # canonical JSON of the command's arguments
    Column("role", String(SAGA_STEP_ROLE_LENGTH_MAX), nullable=False),
    Column("status", String(SAGA_STEP_STATUS_LENGTH_MAX), nullable=False),
    Column("attempts", Integer, nullable=False),
    Column("due_at", BigInteger, nullable=False),
    Column("command_key", String(OUTBOX_KEY_LENGTH_MAX), nullable=True),
    Column("error_code", String(ERROR_CODE_LENGTH_MAX), nullable=True),
    Column("error", Text, nullable=True),
    Column("updated_at", BigInteger, nullable=False),
    CheckConstraint(_one_of(SAGA_STEP_ROLES, "role"), name="role_known"),
    CheckConstraint(_one_of(SAGA_STEP_STATUSES, "status"), name="status_known"),
    Index("ix_saga_steps_status_due_at", "status", "due_at"),
)

saga_timers = Table(
    "saga_timers",
    metadata,
    Column("saga_id", String(SAGA_ID_LENGTH_MAX), primary_key=True),
    Column("name", String(SAGA_TIMER_NAME_LENGTH_MAX), primary_key=True),
    Column("due_at", BigInteger, nullable=False),
    Column("status", String(SAGA_TIMER_STATUS_LENGTH_MAX), nullable=False),
    CheckConstraint(_one_of(SAGA_TIMER_STATUSES, "status"), name="status_known"),
    Index("ix_saga_timers_status_due_at", "status", "due_at"),
)

# Signals received from outside (a PSP webhook, a capture request) under the sender's id, so
# the same signal delivered again is recognised and ignored.
saga_signals = Table(
    "saga_signals",
    metadata,
    Column("signal_id", String(SAGA_SIGNAL_ID_LENGTH_MAX), primary_key=True),
    Column("saga_id", String(SAGA_ID_LENGTH_MAX), nullable=False),
    Column("name", String(SAGA_SIGNAL_NAME_LENGTH_MAX), nullable=False),
    Column("data", Text, nullable=False),
    Column("received_at", BigInteger, nullable=False),
)


# api
# What the HTTP API (package `api`) keeps beside the settlement path: merchants and the keys
# that act for them or for the operator, the responses of requests under their
# Idempotency-Key, each payment's merchant-facing details, batch settlements, and the
# development deployment `settle serve --dev` made on a local chain.
MERCHANT_NAME_LENGTH_MAX = 100
PUBLIC_ID_LENGTH_MAX = 40
API_KEY_ROLES = ("merchant", "operator")
API_KEY_ROLE_LENGTH_MAX = 10
API_ROUTE_LENGTH_MAX = 100
API_IDEMPOTENCY_KEY_LENGTH_MAX = 255
IDEMPOTENCY_STATES = ("started", "completed")
IDEMPOTENCY_STATE_LENGTH_MAX = 10
CAPTURE_METHODS = ("automatic", "manual")
AUTHORIZATION_METHODS = ("allowance", "permit", "erc3009")
METHOD_LENGTH_MAX = 10
SETTLEMENT_OPS = ("capture", "void", "refund")
SETTLEMENT_OP_LENGTH_MAX = 10

merchants = Table(
    "merchants",
    metadata,
    Column("id", String(PUBLIC_ID_LENGTH_MAX), primary_key=True),
    Column("name", String(MERCHANT_NAME_LENGTH_MAX), nullable=False, unique=True),
    Column("address", String(ADDRESS_LENGTH), nullable=True),  # where its money is paid
    Column("created_at", BigInteger, nullable=False),
)

# A key is stored as the SHA-256 of its secret only: the secret is shown once, at creation.
api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(PUBLIC_ID_LENGTH_MAX), primary_key=True),
    Column("secret_hash", LargeBinary(HASH_BYTES), nullable=False, unique=True),
    Column("role", String(API_KEY_ROLE_LENGTH_MAX), nullable=False),
    Column("merchant_id", String(PUBLIC_ID_LENGTH_MAX), ForeignKey("merchants.id"), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    Column("revoked_at", BigInteger, nullable=True),
    CheckConstraint(_one_of(API_KEY_ROLES, "role"), name="role_known"),
    CheckConstraint(
        "(role = 'merchant' AND merchant_id IS NOT NULL) "
        "OR (role = 'operator' AND merchant_id IS NULL)",
        name="merchant_keys_have_a_merchant",
    ),
)

# One row per (API key, route, Idempotency-Key), named by the SHA-256 of the three (`scope`).
# `started` holds the key while its request runs (until `locked_until`, unix ms, after which a
# crashed request's retry may take it over); `completed` holds the response, written in the
# transaction of the command it reports. Commands a request issues are keyed `api:<scope>[:n]`.
idempotency_records = Table(
    "idempotency_records",
    metadata,
    Column("scope", String(64), primary_key=True),
    Column("api_key_id", String(PUBLIC_ID_LENGTH_MAX), nullable=False),
    Column("route", String(API_ROUTE_LENGTH_MAX), nullable=False),
    Column("idempotency_key", String(API_IDEMPOTENCY_KEY_LENGTH_MAX), nullable=False),
    Column("request_hash", LargeBinary(HASH_BYTES), nullable=False),
    Column("request_id", String(PUBLIC_ID_LENGTH_MAX), nullable=False),
    Column("state", String(IDEMPOTENCY_STATE_LENGTH_MAX), nullable=False),
    Column("locked_until", BigInteger, nullable=False),
    Column("response_status", Integer, nullable=True),
    Column("response_body", Text, nullable=True),
    Column("payment_id", String(PAYMENT_ID_LENGTH_MAX), nullable=True),
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint(_one_of(IDEMPOTENCY_STATES, "state"), name="state_known"),
    Index("ix_idempotency_records_created_at", "created_at"),
    Index("ix_idempotency_records_payment_id", "payment_id"),
)

# What a merchant asked for beside the escrow terms; `id` orders payments newest first.
payment_details = Table(
    "payment_details",
    metadata,
    _row_id(),
    Column("payment_id", String(PAYMENT_ID_LENGTH_MAX), nullable=False, unique=True),
    Column("merchant_id", String(PUBLIC_ID_LENGTH_MAX), ForeignKey("merchants.id"), nullable=False),
    Column("capture_method", String(METHOD_LENGTH_MAX), nullable=False),
    Column("authorization_method", String(METHOD_LENGTH_MAX), nullable=False),
    Column("fee_bps", Integer, nullable=False),
    Column("splits", Text, nullable=False),  # canonical JSON list of {recipient, amount_bps}
    Column("metadata", Text, nullable=False),  # canonical JSON object of strings
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint(_one_of(CAPTURE_METHODS, "capture_method"), name="capture_method_known"),
    CheckConstraint(
        _one_of(AUTHORIZATION_METHODS, "authorization_method"), name="authorization_method_known"
    ),
    Index("ix_payment_details_merchant_id_id", "merchant_id", "id"),
    sqlite_autoincrement=True,
)

settlements = Table(
    "settlements",
    metadata,
    Column("id", String(PUBLIC_ID_LENGTH_MAX), primary_key=True),
    Column("merchant_id", String(PUBLIC_ID_LENGTH_MAX), ForeignKey("merchants.id"), nullable=True),
    Column("atomic", Integer, nullable=False),  # 0 or 1
    Column("created_at", BigInteger, nullable=False),
    CheckConstraint("atomic IN (0, 1)", name="atomic_boolean"),
)

settlement_operations = Table(
    "settlement_operations",
    metadata,
    Column(
        "settlement_id",
        String(PUBLIC_ID_LENGTH_MAX),
        ForeignKey("settlements.id"),
        primary_key=True,
    ),
    Column("position", Integer, primary_key=True),
    Column("payment_id", String(PAYMENT_ID_LENGTH_MAX), nullable=False),
    Column("op", String(SETTLEMENT_OP_LENGTH_MAX), nullable=False),
    Column("amount", Amount, nullable=False),
    Column("command_key", String(OUTBOX_KEY_LENGTH_MAX), nullable=False),
    CheckConstraint(_one_of(SETTLEMENT_OPS, "op"), name="op_known"),
)

# The escrow and stablecoin `settle serve --dev` deployed on a local chain, and its dev payers.
dev_deployments = Table(
    "dev_deployments",
    metadata,
    Column("chain_id", BigInteger, primary_key=True),
    Column("escrow", String(ADDRESS_LENGTH), nullable=False),
    Column("token", String(ADDRESS_LENGTH), nullable=False),
    Column("payers", Text, nullable=False),  # canonical JSON list of addresses
    Column("created_at", BigInteger, nullable=False),
)
