"""The escrow log indexer's SQL (engine/chain/indexer): its checkpoint, the hashes of the blocks
it scanned, the logs it read with their stage, the notices it queues, and each consumer's record
of the notices it applied.

The indexer decides; this module only reads and writes, each function one statement (or one
per bounded chunk) on the caller's connection, so a poll's writes commit together in the
transaction the indexer opens. A poll is the hot path of the engine: rows go in through
``insert_rows`` and id lists through ``one_of``, which keep statements few and their text
independent of the row count.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, NamedTuple, Protocol

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from engine.store.db import Database, insert_rows, one_of
from engine.store.schema import (
    LOG_STAGES,
    indexer_blocks,
    indexer_checkpoints,
    indexer_deliveries,
    indexer_logs,
    indexer_notices,
)

# Deliveries one dedupe look-up binds (four parameters each): inside every backend's limit.
DELIVERIES_PER_QUERY_MAX: Final = 500


class LogStage(StrEnum):
    PENDING = "pending"  # in a block the indexer verified, not yet deep enough
    CONFIRMED = "confirmed"  # `confirmations` blocks on top of its block
    REMOVED = "removed"  # its block left the chain after the log was handed out


if tuple(LogStage) != LOG_STAGES:
    raise AssertionError("LogStage and schema.LOG_STAGES disagree")

# (stage, block hash, tx hash, log index): what a consumer records per applied notice.
DeliveryKey = tuple[str, bytes, bytes, int]
# (block hash, tx hash, log index): one log in one block.
LogId = tuple[bytes, bytes, int]


class CheckpointState(NamedTuple):
    start_block: int
    scanned_through: int
    version: int  # grows with every write of the indexer's view


class BlockHeader(Protocol):
    """What the indexer keeps of a scanned block."""

    @property
    def number(self) -> int: ...
    @property
    def hash(self) -> bytes: ...
    @property
    def parent_hash(self) -> bytes: ...


@dataclass(frozen=True, slots=True)
class NewLog:
    block_number: int
    block_hash: bytes
    block_timestamp: int  # unix seconds, the chain's clock
    tx_hash: bytes
    log_index: int
    event: str  # the decoded event's name
    topics: bytes  # the 32-byte topics concatenated
    data: bytes
    stage: LogStage


class StoredNotice(NamedTuple):
    """A queued notice with the log it is about, in the form the log was stored."""

    sequence: int  # the notice's id: delivery order
    stage: LogStage
    block_number: int
    block_hash: bytes
    block_timestamp: int
    tx_hash: bytes
    log_index: int
    topics: bytes
    data: bytes


def open_checkpoint(db: Database, chain_id: int, escrow_address: str, start_block: int) -> int:
    """The id of the checkpoint of (chain id, escrow), created at `start_block` if there is
    none; two indexers racing to create it both get the one that won."""
    key = (
        indexer_checkpoints.c.chain_id == chain_id,
        indexer_checkpoints.c.escrow_address == escrow_address,
    )
    with db.snapshot() as conn:
        found = conn.execute(select(indexer_checkpoints.c.id).where(*key)).scalar()
        if found is not None:
            return int(found)
    try:
        with db.transaction() as conn:
            created = conn.execute(
                insert(indexer_checkpoints)
                .values(
                    chain_id=chain_id,
                    escrow_address=escrow_address,
                    start_block=start_block,
                    scanned_through=start_block - 1,
                    acknowledged_through=0,
                    version=0,
                )
                .returning(indexer_checkpoints.c.id)
            ).scalar_one()
            return int(created)
    except IntegrityError:  # another indexer created it first
        with db.snapshot() as conn:
            return int(conn.execute(select(indexer_checkpoints.c.id).where(*key)).scalar_one())


def checkpoint_count(conn: Connection, chain_id: int) -> int:
    """How many escrows of chain `chain_id` have been indexed into this database."""
    return int(
        conn.execute(
            select(func.count())
            .select_from(indexer_checkpoints)
            .where(indexer_checkpoints.c.chain_id == chain_id)
        ).scalar_one()
    )


class CheckpointStore:
    """The rows of one checkpoint; every method runs on the caller's connection."""

    def __init__(self, checkpoint_id: int) -> None:
        self.checkpoint_id = checkpoint_id

    # -- the checkpoint row --

    def state(self, conn: Connection) -> CheckpointState:
        row = conn.execute(
            select(indexer_checkpoints).where(indexer_checkpoints.c.id == self.checkpoint_id)
        ).one()
        return CheckpointState(row.start_block, row.scanned_through, row.version)

    def advance(self, conn: Connection, version: int, scanned_through: int) -> bool:
        """Moves the scan to `scanned_through` if the checkpoint is still at `version`; False
        when another writer moved it first."""
        moved = conn.execute(
            update(indexer_checkpoints)
            .where(
                indexer_checkpoints.c.id == self.checkpoint_id,
                indexer_checkpoints.c.version == version,
            )
            .values(scanned_through=scanned_through, version=version + 1)
        )
        return moved.rowcount == 1

    def acknowledge(self, conn: Connection, through: int) -> None:
        """Passes the notices up to sequence `through` (never back)."""
        conn.execute(
            update(indexer_checkpoints)
            .where(
                indexer_checkpoints.c.id == self.checkpoint_id,
                indexer_checkpoints.c.acknowledged_through < through,
            )
            .values(acknowledged_through=through)
        )

    def acknowledged_through(self, conn: Connection) -> int:
        return int(
            conn.execute(
                select(indexer_checkpoints.c.acknowledged_through).where(
                    indexer_checkpoints.c.id == self.checkpoint_id
                )
            ).scalar_one()
        )

    # -- block hashes --

    def block_hashes(self, conn: Connection, above: int = -1) -> dict[int, bytes]:
        """The stored hashes of scanned blocks numbered above `above` (all by default)."""
        b = indexer_blocks.c
        rows = conn.execute(
            select(b.number, b.hash).where(b.checkpoint_id == self.checkpoint_id, b.number > above)
        )
        return {number: bytes(block_hash) for number, block_hash in rows}

    def add_blocks(self, conn: Connection, headers: Sequence[BlockHeader], keep_from: int) -> None:
        """Stores the headers and forgets the blocks below `keep_from`: the window kept is what
        bounds the depth of a reorg the indexer can follow."""
        insert_rows(
            conn,
            indexer_blocks,
            [
                {
                    "checkpoint_id": self.checkpoint_id,
                    "number": h.number,
                    "hash": h.hash,
                    "parent_hash": h.parent_hash,
                }
                for h in headers
            ],
        )
        conn.execute(
            delete(indexer_blocks).where(
                indexer_blocks.c.checkpoint_id == self.checkpoint_id,
                indexer_blocks.c.number < keep_from,
            )
        )

    def drop_blocks_above(self, conn: Connection, number: int) -> None:
        conn.execute(
            delete(indexer_blocks).where(
                indexer_blocks.c.checkpoint_id == self.checkpoint_id,
                indexer_blocks.c.number > number,
            )
        )

    # -- logs --

    def pending_through(self, conn: Connection, block_number: int) -> list[int]:
        """Pending logs in blocks up to `block_number`, in chain order."""
        return list(
            conn.execute(
                select(indexer_logs.c.id)
                .where(
                    indexer_logs.c.checkpoint_id == self.checkpoint_id,
                    indexer_logs.c.stage == LogStage.PENDING,
                    indexer_logs.c.block_number <= block_number,
                )
                .order_by(indexer_logs.c.block_number, indexer_logs.c.log_index)
            ).scalars()
        )

    def live_above(self, conn: Connection, block_number: int) -> list[int]:
        """Logs not removed in blocks above `block_number`, in chain order."""
        return list(
            conn.execute(
                select(indexer_logs.c.id)
                .where(
                    indexer_logs.c.checkpoint_id == self.checkpoint_id,
                    indexer_logs.c.block_number > block_number,
                    indexer_logs.c.stage != LogStage.REMOVED,
                )
                .order_by(indexer_logs.c.block_number, indexer_logs.c.log_index)
            ).scalars()
        )

    def removed_from(self, conn: Connection, block_number: int) -> dict[tuple[bytes, int], int]:
        """Removed logs in blocks from `block_number` up: (block hash, log index) -> log id."""
        rows = conn.execute(
            select(indexer_logs.c.id, indexer_logs.c.block_hash, indexer_logs.c.log_index).where(
                indexer_logs.c.checkpoint_id == self.checkpoint_id,
                indexer_logs.c.block_number >= block_number,
                indexer_logs.c.stage == LogStage.REMOVED,
            )
        )
        return {(bytes(row.block_hash), row.log_index): row.id for row in rows}

    def add_logs(self, conn: Connection, logs: Sequence[NewLog]) -> list[int]:
        """Stores the logs; their ids in the order given."""
        return insert_rows(
            conn,
            indexer_logs,
            [
                {
                    "checkpoint_id": self.checkpoint_id,
                    "block_number": log.block_number,
                    "block_hash": log.block_hash,
                    "block_timestamp": log.block_timestamp,
                    "tx_hash": log.tx_hash,
                    "log_index": log.log_index,
                    "event": log.event,
                    "topics": log.topics,
                    "data": log.data,
                    "stage": log.stage.value,
                }
                for log in logs
            ],
            returning=indexer_logs.c.id,
        )

    def set_stage(self, conn: Connection, log_ids: Sequence[int], stage: LogStage) -> None:
        conn.execute(
            update(indexer_logs)
            .where(one_of(conn, indexer_logs.c.id, log_ids))
            .values(stage=stage.value)
        )

    # -- notices --

    def add_notices(self, conn: Connection, notices: Sequence[tuple[int, LogStage]]) -> None:
        """Queues a notice per (log id, stage), in the order given: the order of delivery."""
        insert_rows(
            conn,
            indexer_notices,
            [
                {"checkpoint_id": self.checkpoint_id, "log_id": log_id, "stage": stage.value}
                for log_id, stage in notices
            ],
        )

    def notices_after(self, conn: Connection, after: int, limit: int) -> list[StoredNotice]:
        """Up to `limit` notices with sequences above `after`, in delivery order."""
        n, g = indexer_notices.c, indexer_logs.c
        rows = conn.execute(
            select(
                n.id,
                n.stage,
                g.block_number,
                g.block_hash,
                g.block_timestamp,
                g.tx_hash,
                g.log_index,
                g.topics,
                g.data,
            )
            .join(indexer_logs, g.id == n.log_id)
            .where(n.checkpoint_id == self.checkpoint_id, n.id > after)
            .order_by(n.id)
            .limit(limit)
        )
        return [
            StoredNotice(
                sequence,
                LogStage(stage),
                block_number,
                bytes(block_hash),
                block_timestamp,
                bytes(tx_hash),
                log_index,
                bytes(topics),
                bytes(data),
            )
            for (
                sequence,
                stage,
                block_number,
                block_hash,
                block_timestamp,
                tx_hash,
                log_index,
                topics,
                data,
            ) in rows
        ]


# -- a consumer's deliveries --


def delivered(conn: Connection, consumer: str, keys: Sequence[DeliveryKey]) -> set[DeliveryKey]:
    """Which of `keys` the consumer has recorded as applied."""
    d = indexer_deliveries.c
    seen: set[DeliveryKey] = set()
    unique = sorted(set(keys))
    for first in range(0, len(unique), DELIVERIES_PER_QUERY_MAX):
        chunk = unique[first : first + DELIVERIES_PER_QUERY_MAX]
        rows = conn.execute(
            select(d.stage, d.block_hash, d.tx_hash, d.log_index).where(
                d.consumer == consumer,
                one_of(conn, (d.stage, d.block_hash, d.tx_hash, d.log_index), chunk),
            )
        )
        seen.update((r.stage, bytes(r.block_hash), bytes(r.tx_hash), r.log_index) for r in rows)
    return seen


def record_deliveries(conn: Connection, consumer: str, keys: Sequence[DeliveryKey]) -> None:
    """Records `keys` as applied; a key recorded before fails on the primary key."""
    insert_rows(
        conn,
        indexer_deliveries,
        [
            {
                "consumer": consumer,
                "stage": stage,
                "block_hash": block_hash,
                "tx_hash": tx_hash,
                "log_index": log_index,
            }
            for stage, block_hash, tx_hash, log_index in keys
        ],
    )


def confirmed_delivered(conn: Connection, consumer: str, logs: Sequence[LogId]) -> set[LogId]:
    """Which of `logs` the consumer has applied the confirmed notice of."""
    d = indexer_deliveries.c
    columns = (d.block_hash, d.tx_hash, d.log_index)
    unique = sorted(set(logs))
    found: set[LogId] = set()
    for first in range(0, len(unique), DELIVERIES_PER_QUERY_MAX):
        rows = conn.execute(
            select(*columns).where(
                d.consumer == consumer,
                d.stage == LogStage.CONFIRMED.value,
                one_of(conn, columns, unique[first : first + DELIVERIES_PER_QUERY_MAX]),
            )
        )
        found.update((bytes(h), bytes(t), i) for h, t, i in rows)
    return found
