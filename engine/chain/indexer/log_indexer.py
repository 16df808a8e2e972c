"""The escrow log indexer (DESIGN §5.4): what the chain confirmed, and word of what a reorg took.

`Indexer.poll` is one bounded step, run at the caller's pace:

1. read the node's head, then in batched JSON-RPC requests the headers of the last few
   blocks already scanned, the headers of up to `blocks_per_poll_max` new blocks and the
   escrow's payment logs in them;
2. if the hash of the last scanned block changed, walk back through the stored hashes to the
   fork point, mark every log above it removed, and re-read from there;
3. otherwise check that the new headers chain onto the stored tip and that every log sits in one
   of them, store headers and logs, and confirm the logs that reached the configured depth;
4. hand out the notices (pending, confirmed, removed) the consumer has not acknowledged.

A log is confirmed once `confirmations` blocks are built on top of its block (the meaning of
`Network.confirmations_default`: 0 confirms a log as soon as it is mined), counted on top of
the last block the indexer verified rather than on the node's head, whose link to the log's
block nobody has checked. A reorg of d blocks replaces blocks that carry at most d - 1 blocks
on top, so with `confirmations` >= d nothing it removes was ever confirmed.

Delivery is at least once: a notice stays deliverable until `acknowledge` passes it, and a
restarted indexer hands out the unacknowledged ones again. The consumer applies a notice in its
own transaction together with `NoticeDedupe.first_delivery`, which turns a redelivery into a
no-op, so its effect happens once.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from itertools import takewhile
from typing import Any, ClassVar, Final, NamedTuple

from eth_utils import to_checksum_address
from sqlalchemy import Connection
from web3 import Web3

from engine.chain.contracts.logs import (
    TOPIC_BYTES,
    EscrowEvent,
    decode_event,
    event_name,
    event_topics,
)
from engine.chain.errors import ChainError
from engine.chain.rpc import RPC_BATCH_SIZE_MAX, RpcCall, data, hex_data, ok, quantity, rpc_for
from engine.store import escrow_logs
from engine.store.db import Database
from engine.store.escrow_logs import (
    CheckpointStore,
    DeliveryKey,
    LogStage,
    NewLog,
    StoredNotice,
    open_checkpoint,
)
from engine.store.schema import CONSUMER_NAME_LENGTH_MAX

# How many of the last scanned blocks every poll fetches again: the tip alone reveals any
# reorg below it (each hash covers its parent), the few below it locate a shallow fork point
# without another round trip.
RECHECK_BLOCKS: Final = 6
BLOCKS_PER_POLL_LIMIT: Final = 10_000
REORG_DEPTH_MAX_DEFAULT: Final = 128
NOTICES_PER_POLL_MAX_DEFAULT: Final = 1_000
# Notices read at a time while completing the last transaction of a full poll.
_SAME_TX_NOTICES_MAX: Final = 256


class IndexerError(ChainError):
    """Base of the indexer's own errors."""


class ReorgTooDeep(IndexerError):
    """Every stored block hash changed: the fork lies below what the indexer keeps.

    Raised rather than guessed at: the logs it already confirmed may be gone, and an operator
    must decide (raise reorg_depth_max, or rebuild the checkpoint from a known block)."""

    code: ClassVar[str] = "reorg_too_deep"


class IndexerConflict(IndexerError):
    """Another indexer advanced the same checkpoint; two writers would interleave their views."""

    code: ClassVar[str] = "indexer_conflict"


class LogKey(NamedTuple):
    """What identifies one log in one block: the consumer-side dedupe key."""

    block_hash: bytes
    tx_hash: bytes
    log_index: int


@dataclass(frozen=True, slots=True)
class EscrowLog:
    block_number: int
    block_hash: bytes
    block_timestamp: int  # unix seconds: when the chain says the event happened
    tx_hash: bytes
    log_index: int
    event: EscrowEvent

    @property
    def key(self) -> LogKey:
        return LogKey(self.block_hash, self.tx_hash, self.log_index)


@dataclass(frozen=True, slots=True)
class LogNotice:
    sequence: int  # delivery order; what `acknowledge` advances past
    stage: LogStage
    log: EscrowLog


@dataclass(frozen=True, slots=True)
class PollResult:
    """The unacknowledged notices in delivery order, and what this poll saw of the chain.

    Apply `notices` in order: after a reorg the same log can be removed and come back, so
    handling the lists by stage would lose which came last."""

    notices: tuple[LogNotice, ...]
    reorg_depth: int  # scanned blocks this poll found replaced (0: none)
    head: int  # the node's latest block number
    scanned_through: int  # the last block the indexer verified

    @property
    def pending(self) -> list[EscrowLog]:
        return self._logs(LogStage.PENDING)

    @property
    def confirmed(self) -> list[EscrowLog]:
        return self._logs(LogStage.CONFIRMED)

    @property
    def removed(self) -> list[EscrowLog]:
        return self._logs(LogStage.REMOVED)

    @property
    def through(self) -> int | None:
        """The sequence of the last notice, which acknowledging this result passes."""
        return self.notices[-1].sequence if self.notices else None

    def _logs(self, stage: LogStage) -> list[EscrowLog]:
        return [notice.log for notice in self.notices if notice.stage is stage]


@dataclass(frozen=True, slots=True)
class _Header:
    number: int
    hash: bytes
    parent_hash: bytes
    timestamp: int


@dataclass(frozen=True, slots=True)
class _Log:
    """A payment log read out of the node's JSON once, into what the indexer stores."""

    block_number: int
    block_hash: bytes
    tx_hash: bytes
    log_index: int
    topics: tuple[bytes, ...]
    data: bytes

    @property
    def key(self) -> tuple[bytes, int]:
        """Its identity within the indexer's view: its block hash and index in that block."""
        return self.block_hash, self.log_index


class _BlockGone(Exception):
    """The node has no block at a number it had: the chain got shorter while we read."""


@dataclass(frozen=True, slots=True)
class _Checkpoint:
    start_block: int
    scanned_through: int
    version: int
    # number -> hash of the scanned blocks a poll compares with the chain (the last
    # RECHECK_BLOCKS up to the head, and above); the rest of the stored window is read only
    # when looking for a fork point.
    hashes: dict[int, bytes]


@dataclass(frozen=True, slots=True)
class _Step:
    head: int
    scanned_through: int
    reorg_depth: int


class Indexer:
    """Reads one escrow's payment logs from a checkpoint kept per (chain id, escrow address).

    `start_block` (the escrow's deployment block, say) only seeds a new checkpoint; an existing
    one continues where it stopped. Reorgs deeper than `reorg_depth_max` blocks raise
    ReorgTooDeep: only that many block hashes are kept.
    """

    def __init__(
        self,
        db: Database,
        w3: Web3,
        escrow_address: str,
        confirmations: int,
        blocks_per_poll_max: int,
        *,
        start_block: int = 0,
        reorg_depth_max: int = REORG_DEPTH_MAX_DEFAULT,
        notices_per_poll_max: int = NOTICES_PER_POLL_MAX_DEFAULT,
    ) -> None:
        if not 0 <= confirmations <= reorg_depth_max:
            raise ValueError("confirmations must be between 0 and reorg_depth_max")
        if not 0 < blocks_per_poll_max <= BLOCKS_PER_POLL_LIMIT:
            raise ValueError(f"blocks_per_poll_max must be between 1 and {BLOCKS_PER_POLL_LIMIT}")
        if start_block < 0 or notices_per_poll_max <= 0:
            raise ValueError("start_block must not be negative, notices_per_poll_max positive")
        self._db = db
        # Raw JSON-RPC, not web3's convenience layer (DESIGN §7): its result formatting
        # took about half of a poll's CPU.
        self._rpc = rpc_for(w3)
        self._escrow = to_checksum_address(escrow_address)
        self._confirmations = confirmations
        self._blocks_per_poll_max = blocks_per_poll_max
        self._reorg_depth_max = reorg_depth_max
        self._notices_per_poll_max = notices_per_poll_max
        self._topics = [hex_data(topic) for topic in event_topics()]
        self.chain_id: int = quantity(self._rpc.call("eth_chainId", []))
        self._checkpoint = CheckpointStore(
            open_checkpoint(db, self.chain_id, self._escrow, start_block)
        )

    def poll(self) -> PollResult:
        """Advance by at most `blocks_per_poll_max` blocks (after a rollback, also re-read the
        replacement blocks) and return every notice not yet acknowledged, up to the limit."""
        step = self._step()
        reorg_depth = step.reorg_depth
        if reorg_depth:
            step = self._step()
            reorg_depth += step.reorg_depth
        return PollResult(self._undelivered(), reorg_depth, step.head, step.scanned_through)

    def acknowledge(self, result: PollResult, conn: Connection | None = None) -> None:
        """Mark the result's notices applied, so they are not delivered again.

        Pass the consumer's own connection when its effects live in this database: then the
        acknowledgement commits with them, and a crash in between cannot redeliver."""
        through = result.through
        if through is None:
            return
        if conn is not None:
            self._checkpoint.acknowledge(conn, through)
            return
        with self._db.transaction() as own:
            self._checkpoint.acknowledge(own, through)

    # ───────────────────────────── reading the chain ─────────────────────────────

    def _step(self) -> _Step:
        head = quantity(self._rpc.call("eth_blockNumber", []))
        checkpoint = self._load(head)
        scanned = checkpoint.scanned_through
        tip = min(scanned, head)
        recheck = sorted(n for n in checkpoint.hashes if tip - RECHECK_BLOCKS < n <= tip)
        first, last = scanned + 1, min(head, scanned + self._blocks_per_poll_max)
        new_numbers = range(first, last + 1)
        try:
            headers, logs = self._read([*recheck, *new_numbers], new_numbers)
            if recheck and headers[recheck[-1]].hash != checkpoint.hashes[recheck[-1]]:
                fork = self._fork_point(checkpoint, headers, tip)
                self._roll_back(checkpoint, fork)
                return _Step(head, fork, scanned - fork)
        except _BlockGone:  # the chain got shorter while we read: look again next poll
            return _Step(head, scanned, 0)
        if not new_numbers:  # nothing new, or the node lags behind what we verified
            return _Step(head, scanned, 0)
        new_headers = [headers[n] for n in new_numbers]
        if not _chained(checkpoint.hashes.get(scanned), new_headers) or any(
            log.block_hash != headers[log.block_number].hash for log in logs
        ):
            # The chain moved between the reads of one batch; the next poll sees the reorg.
            return _Step(head, scanned, 0)
        self._record(checkpoint, new_headers, logs)
        return _Step(head, last, 0)

    def _read(
        self, numbers: Sequence[int], log_range: range
    ) -> tuple[dict[int, _Header], list[_Log]]:
        """Headers of `numbers` and the escrow's logs in `log_range` (whose blocks are among
        `numbers`), in one batch: over HTTP the client splits it into requests nodes accept."""
        calls: list[RpcCall] = [("eth_getBlockByNumber", [hex(n), False]) for n in numbers]
        if log_range:
            log_filter = {
                # A list: the embedded EVM's request formatting reads the field as address[].
                "address": [self._escrow],
                "fromBlock": hex(log_range.start),
                "toBlock": hex(log_range[-1]),
                "topics": [self._topics],
            }
            calls.append(("eth_getLogs", [log_filter]))
        results = self._rpc.batch(calls)
        headers = [_header(ok(result)) for result in results[: len(numbers)]]
        logs = [_log(raw) for raw in ok(results[-1])] if log_range else []
        return {h.number: h for h in headers}, _in_chain_order(logs)

    def _fork_point(self, checkpoint: _Checkpoint, headers: dict[int, _Header], tip: int) -> int:
        """The highest stored block the chain still has, fetching older headers as needed."""
        canonical = {number: header.hash for number, header in headers.items()}
        kept = self._hashes()
        stored = sorted((n for n in kept if n <= tip), reverse=True)
        for position, number in enumerate(stored):
            if number not in canonical:
                older = stored[position : position + RPC_BATCH_SIZE_MAX]  # one request's worth
                fetched, _ = self._read(older, range(0))
                canonical.update((n, h.hash) for n, h in fetched.items())
            if canonical[number] == kept[number]:
                return number
        if kept and min(kept) <= checkpoint.start_block:
            return checkpoint.start_block - 1  # every block since the start was replaced
        raise ReorgTooDeep(
            f"chain {self.chain_id} replaced all {len(kept)} kept block hashes "
            f"below block {checkpoint.scanned_through}: the reorg is deeper than "
            f"reorg_depth_max={self._reorg_depth_max}"
        )

    # ──────────────────────────── writing what it saw ────────────────────────────

    def _record(
        self, checkpoint: _Checkpoint, headers: Sequence[_Header], logs: Sequence[_Log]
    ) -> None:
        last = headers[-1].number
        confirmed_through = last - self._confirmations
        timestamps = {header.number: header.timestamp for header in headers}
        with self._db.transaction() as conn:
            self._advance(conn, checkpoint, last)
            self._checkpoint.add_blocks(conn, headers, keep_from=last - self._reorg_depth_max)
            # Logs seen before now come first: they sit in lower blocks than the new ones.
            matured = self._checkpoint.pending_through(conn, confirmed_through)
            self._set_stage(conn, matured, LogStage.CONFIRMED)
            self._store_logs(conn, logs, confirmed_through, timestamps)

    def _store_logs(
        self,
        conn: Connection,
        logs: Sequence[_Log],
        confirmed_through: int,
        timestamps: dict[int, int],
    ) -> None:
        """Store newly read logs, each pending or already confirmed, and queue their notices
        in chain order (the confirmed ones sit in the lower blocks)."""
        if not logs:
            return
        # Rows in these blocks exist only if a reorg removed them and the chain came back.
        revivable = self._checkpoint.removed_from(conn, logs[0].block_number)
        stages = {
            log.key: LogStage.CONFIRMED
            if log.block_number <= confirmed_through
            else LogStage.PENDING
            for log in logs
        }
        ids = {key: revivable[key] for key in stages if key in revivable}
        fresh = [log for log in logs if log.key not in revivable]
        if fresh:
            inserted = self._checkpoint.add_logs(
                conn,
                [_new_log(log, timestamps[log.block_number], stages[log.key]) for log in fresh],
            )
            ids.update(zip((log.key for log in fresh), inserted, strict=True))
        for stage in (LogStage.CONFIRMED, LogStage.PENDING):
            revived = [ids[key] for key in ids if key in revivable and stages[key] is stage]
            if revived:
                self._checkpoint.set_stage(conn, revived, stage)
        self._checkpoint.add_notices(conn, [(ids[log.key], stages[log.key]) for log in logs])

    def _roll_back(self, checkpoint: _Checkpoint, fork: int) -> None:
        with self._db.transaction() as conn:
            self._advance(conn, checkpoint, fork)
            gone = self._checkpoint.live_above(conn, fork)
            self._set_stage(conn, gone, LogStage.REMOVED)
            self._checkpoint.drop_blocks_above(conn, fork)

    def _advance(self, conn: Connection, checkpoint: _Checkpoint, scanned_through: int) -> None:
        if not self._checkpoint.advance(conn, checkpoint.version, scanned_through):
            raise IndexerConflict(
                f"the indexer checkpoint of {self._escrow} on chain {self.chain_id} was "
                "advanced by another indexer; run one indexer per escrow"
            )

    def _set_stage(self, conn: Connection, log_ids: list[int], stage: LogStage) -> None:
        """Move the logs to `stage` and queue a notice for each, in the order given."""
        if not log_ids:
            return
        self._checkpoint.set_stage(conn, log_ids, stage)
        self._checkpoint.add_notices(conn, [(log_id, stage) for log_id in log_ids])

    # ────────────────────────────── checkpoint state ─────────────────────────────

    def _load(self, head: int) -> _Checkpoint:
        """The checkpoint, with the hashes a poll at chain head ``head`` rechecks."""
        with self._db.snapshot() as conn:
            state = self._checkpoint.state(conn)
            tip = min(state.scanned_through, head)
            recent = self._checkpoint.block_hashes(conn, above=tip - RECHECK_BLOCKS)
        return _Checkpoint(
            start_block=state.start_block,
            scanned_through=state.scanned_through,
            version=state.version,
            hashes=recent,
        )

    def _hashes(self) -> dict[int, bytes]:
        """The stored hashes of every scanned block kept."""
        with self._db.snapshot() as conn:
            return self._checkpoint.block_hashes(conn)

    def _undelivered(self) -> tuple[LogNotice, ...]:
        """Unacknowledged notices, up to the limit, but never part of one transaction's: a
        consumer sees a capture's LegPaid logs in the same poll as the capture."""
        with self._db.snapshot() as conn:
            acknowledged = self._checkpoint.acknowledged_through(conn)
            rows = self._checkpoint.notices_after(conn, acknowledged, self._notices_per_poll_max)
            while len(rows) >= self._notices_per_poll_max:
                last = rows[-1]
                # Only the run right after the last row: acknowledging a poll passes every
                # sequence up to its last notice, so the poll must hold each one of them.
                more = list(
                    takewhile(
                        partial(_same_transaction, last),
                        self._checkpoint.notices_after(conn, last.sequence, _SAME_TX_NOTICES_MAX),
                    )
                )
                rows.extend(more)
                if len(more) < _SAME_TX_NOTICES_MAX:
                    break
        return tuple(LogNotice(row.sequence, row.stage, _escrow_log(row)) for row in rows)


class NoticeDedupe:
    """One consumer's record of the notices it applied, kept in the consumer's transaction.

    Notices arrive at least once; a consumer that writes `first_delivery` in the same
    transaction as its effects applies each (stage, log) exactly once. Two workers of one
    consumer racing on the same notice: the second insert fails on the primary key and its
    transaction rolls back, to be retried as a duplicate.
    """

    def __init__(self, consumer: str) -> None:
        if not 0 < len(consumer) <= CONSUMER_NAME_LENGTH_MAX:
            raise ValueError(f"a consumer name has 1 to {CONSUMER_NAME_LENGTH_MAX} characters")
        self.consumer = consumer

    def first_delivery(self, conn: Connection, notice: LogNotice) -> bool:
        """Record the notice as applied; False if this consumer had applied it already."""
        return self.first_deliveries(conn, [notice])[0]

    def first_deliveries(self, conn: Connection, notices: Sequence[LogNotice]) -> list[bool]:
        """``first_delivery`` for a poll's notices in one look-up and one insert; a notice
        repeated within ``notices`` counts as delivered at its first place."""
        keys = [_delivery_key(notice) for notice in notices]
        seen = escrow_logs.delivered(conn, self.consumer, keys)
        fresh: list[bool] = []
        first_keys: list[DeliveryKey] = []
        for key in keys:
            first_time = key not in seen
            fresh.append(first_time)
            if first_time:
                seen.add(key)
                first_keys.append(key)
        escrow_logs.record_deliveries(conn, self.consumer, first_keys)
        return fresh

    def confirmed_applied(self, conn: Connection, notices: Sequence[LogNotice]) -> set[LogKey]:
        """The logs of ``notices`` whose confirmed notice this consumer has applied: for a
        removed log, whether its fact had been taken as final. Ask before recording a poll's
        deliveries, which would count that poll's own confirmed notices, wherever they stand."""
        logs = [notice.log.key for notice in notices]
        return {LogKey(*key) for key in escrow_logs.confirmed_delivered(conn, self.consumer, logs)}


def _delivery_key(notice: LogNotice) -> DeliveryKey:
    log = notice.log
    return notice.stage.value, log.block_hash, log.tx_hash, log.log_index


def _same_transaction(first: StoredNotice, row: StoredNotice) -> bool:
    """Whether two notice rows are of one transaction's logs at one stage."""
    return (row.stage, row.tx_hash, row.block_hash) == (
        first.stage,
        first.tx_hash,
        first.block_hash,
    )


def _header(block: dict[str, Any] | None) -> _Header:
    """A header from eth_getBlockByNumber's answer, which is null for a block not there."""
    if block is None:
        raise _BlockGone
    return _Header(
        number=quantity(block["number"]),
        hash=data(block["hash"]),
        parent_hash=data(block["parentHash"]),
        timestamp=quantity(block["timestamp"]),
    )


def _log(raw: dict[str, Any]) -> _Log:
    return _Log(
        block_number=quantity(raw["blockNumber"]),
        block_hash=data(raw["blockHash"]),
        tx_hash=data(raw["transactionHash"]),
        log_index=quantity(raw["logIndex"]),
        topics=tuple(map(data, raw["topics"])),
        data=data(raw["data"]),
    )


def _chained(parent_hash: bytes | None, headers: Sequence[_Header]) -> bool:
    """Whether `headers` follow each other and the block whose hash is `parent_hash`."""
    for header in headers:
        if parent_hash is not None and header.parent_hash != parent_hash:
            return False
        parent_hash = header.hash
    return True


def _in_chain_order(logs: Iterable[_Log]) -> list[_Log]:
    return sorted(logs, key=lambda log: (log.block_number, log.log_index))


def _new_log(log: _Log, block_timestamp: int, stage: LogStage) -> NewLog:
    return NewLog(
        block_number=log.block_number,
        block_hash=log.block_hash,
        block_timestamp=block_timestamp,
        tx_hash=log.tx_hash,
        log_index=log.log_index,
        # Decoding here refuses a log the engine could not deliver, before it is stored.
        event=event_name(decode_event(log.topics, log.data)),
        topics=b"".join(log.topics),
        data=log.data,
        stage=stage,
    )


def _escrow_log(row: StoredNotice) -> EscrowLog:
    topics = [
        row.topics[start : start + TOPIC_BYTES] for start in range(0, len(row.topics), TOPIC_BYTES)
    ]
    return EscrowLog(
        block_number=row.block_number,
        block_hash=row.block_hash,
        block_timestamp=row.block_timestamp,
        tx_hash=row.tx_hash,
        log_index=row.log_index,
        event=decode_event(topics, row.data),
    )
