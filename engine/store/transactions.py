"""The transaction manager's SQL (engine/chain/txmanager): signer lanes, transaction rows,
signed attempts, history.

Every write happens inside a transaction the caller opens (`Database.transaction()`), so the
manager decides what commits together: a nonce with the row that takes it, a status change with
its history entry, signed attempts before their broadcast.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from sqlalchemy import Connection, Row, bindparam, func, insert, select, update

from engine.store.db import one_of
from engine.store.schema import TX_STATUSES, tx_attempts, tx_history, tx_lanes, txs

# SQLite allows 32766 bound parameters per statement; stay well below for IN (...) lists.
IN_LIST_SIZE_MAX: Final = 900


class TxStatus(StrEnum):
    """A transaction's place in its life; the last three are final.

    queued: has its nonce, no node has acknowledged a signed attempt yet.
    sent: a node acknowledged an attempt (or a lookup found it), none is mined.
    mined: one attempt is in a block, not yet at the confirmation depth (see receipt_status).
    confirmed: mined successfully, at the confirmation depth.
    failed: mined and reverted, at the confirmation depth (error_* hold the decoded reason).
    replaced: the nonce was used by a transaction with another payload, not signed here, so
    this one can never be mined; its operation did not happen.
    """

    QUEUED = "queued"
    SENT = "sent"
    MINED = "mined"
    CONFIRMED = "confirmed"
    FAILED = "failed"
    REPLACED = "replaced"


FINAL_STATUSES: Final = frozenset({TxStatus.CONFIRMED, TxStatus.FAILED, TxStatus.REPLACED})
OPEN_STATUSES: Final = (TxStatus.QUEUED, TxStatus.SENT, TxStatus.MINED)
assert {status.value for status in TxStatus} == set(TX_STATUSES)


@dataclass(frozen=True)
class Fees:
    """An EIP-1559 fee offer in wei per gas, as an attempt is signed and stored with it (the
    policy that chooses it is the chain's: engine/chain/txmanager/fees.py)."""

    max_fee_per_gas: int
    max_priority_fee_per_gas: int

    def __post_init__(self) -> None:
        assert 0 <= self.max_priority_fee_per_gas <= self.max_fee_per_gas, self


@dataclass(frozen=True)
class TxRecord:
    id: int
    idempotency_key: str
    chain_id: int
    sender: str
    nonce: int
    to: str
    data: bytes
    value: int
    gas_limit: int
    max_fee_per_gas: int | None
    max_priority_fee_per_gas: int | None
    status: TxStatus
    tx_hash: bytes | None
    attempts: int
    block_number: int | None
    block_hash: bytes | None
    receipt_status: int | None
    gas_used: int | None
    error_code: str | None
    error_message: str | None
    created_at: int
    updated_at: int
    sent_at: int | None

    @property
    def is_final(self) -> bool:
        return self.status in FINAL_STATUSES

    def same_payload(self, to: str, data: bytes, value: int) -> bool:
        return (self.to.lower(), self.data, self.value) == (to.lower(), data, value)


@dataclass(frozen=True)
class Attempt:
    """One signed transaction for a record's nonce; only the fees differ between attempts."""

    id: int
    tx_id: int
    tx_hash: bytes
    raw: bytes
    fees: Fees
    signed_at: int
    broadcast_at: int | None


@dataclass(frozen=True)
class HistoryEntry:
    status: TxStatus
    event: str
    tx_hash: bytes | None
    detail: str
    at: int


@dataclass(frozen=True)
class NewTx:
    idempotency_key: str
    sender: str
    to: str
    data: bytes
    value: int
    gas_limit: int


@dataclass(frozen=True)
class NewAttempt:
    tx_id: int
    tx_hash: bytes
    raw: bytes
    fees: Fees


@dataclass(frozen=True)
class Change:
    """A status change or annotation of one record, written with its history entry.

    `fields` are further txs columns to set; a Change with the record's current status is an
    annotation (history only, plus fields).
    """

    tx_id: int
    status: TxStatus
    event: str
    detail: str
    tx_hash: bytes | None = None
    fields: Mapping[str, Any] | None = None


def _record(row: Row[Any]) -> TxRecord:
    m = row._mapping
    return TxRecord(
        id=m["id"],
        idempotency_key=m["idempotency_key"],
        chain_id=m["chain_id"],
        sender=m["sender"],
        nonce=m["nonce"],
        to=m["to_address"],
        data=bytes(m["data"]),
        value=m["value"],
        gas_limit=m["gas_limit"],
        max_fee_per_gas=m["max_fee_per_gas"],
        max_priority_fee_per_gas=m["max_priority_fee_per_gas"],
        status=TxStatus(m["status"]),
        tx_hash=None if m["tx_hash"] is None else bytes(m["tx_hash"]),
        attempts=m["attempts"],
        block_number=m["block_number"],
        block_hash=None if m["block_hash"] is None else bytes(m["block_hash"]),
        receipt_status=m["receipt_status"],
        gas_used=m["gas_used"],
        error_code=m["error_code"],
        error_message=m["error_message"],
        created_at=m["created_at"],
        updated_at=m["updated_at"],
        sent_at=m["sent_at"],
    )


def _attempt(row: Row[Any]) -> Attempt:
    m = row._mapping
    return Attempt(
        id=m["id"],
        tx_id=m["tx_id"],
        tx_hash=bytes(m["tx_hash"]),
        raw=bytes(m["raw"]),
        fees=Fees(m["max_fee_per_gas"], m["max_priority_fee_per_gas"]),
        signed_at=m["signed_at"],
        broadcast_at=m["broadcast_at"],
    )


def _chunks(items: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(items), IN_LIST_SIZE_MAX):
        yield items[start : start + IN_LIST_SIZE_MAX]


class TxStore:
    """SQL for one chain's transactions; every method runs on the caller's connection."""

    def __init__(self, chain_id: int) -> None:
        self.chain_id = chain_id

    # -- lanes --

    def lane_nonces(self, conn: Connection) -> dict[str, int]:
        rows = conn.execute(
            select(tx_lanes.c.address, tx_lanes.c.next_nonce).where(
                tx_lanes.c.chain_id == self.chain_id
            )
        )
        return {address: next_nonce for address, next_nonce in rows}

    def add_lane(self, conn: Connection, address: str, next_nonce: int, now: int) -> None:
        conn.execute(
            insert(tx_lanes).values(
                chain_id=self.chain_id, address=address, next_nonce=next_nonce, created_at=now
            )
        )

    def advance_lane(self, conn: Connection, address: str, next_nonce: int) -> bool:
        """Moves a lane's next nonce up to `next_nonce` (never down); True if it moved."""
        result = conn.execute(
            update(tx_lanes)
            .where(
                tx_lanes.c.chain_id == self.chain_id,
                tx_lanes.c.address == address,
                tx_lanes.c.next_nonce < next_nonce,
            )
            .values(next_nonce=next_nonce)
        )
        return bool(result.rowcount)

    def open_counts(self, conn: Connection) -> dict[str, int]:
        """Unfinished transactions per lane: the load that lane choice balances."""
        rows = conn.execute(
            select(txs.c.sender, func.count())
            .where(txs.c.chain_id == self.chain_id, txs.c.status.in_(OPEN_STATUSES))
            .group_by(txs.c.sender)
        )
        return {sender: count for sender, count in rows}

    # -- records --

    def by_keys(self, conn: Connection, keys: Sequence[str]) -> dict[str, TxRecord]:
        found: dict[str, TxRecord] = {}
        for chunk in _chunks(keys):
            rows = conn.execute(select(txs).where(one_of(conn, txs.c.idempotency_key, chunk)))
            found.update((record.idempotency_key, record) for record in map(_record, rows))
        return found

    def by_ids(self, conn: Connection, ids: Sequence[int]) -> list[TxRecord]:
        records: list[TxRecord] = []
        for chunk in _chunks(ids):
            records.extend(
                map(_record, conn.execute(select(txs).where(one_of(conn, txs.c.id, chunk))))
            )
        return sorted(records, key=lambda record: record.id)

    def insert(self, conn: Connection, new: Sequence[NewTx], now: int) -> list[TxRecord]:
        """Gives each new transaction the next nonce of its lane and stores it as queued.

        The lane rows are locked (PostgreSQL: FOR UPDATE; SQLite: the transaction already holds
        the write lock), so concurrent submitters never take the same nonce, and the nonce
        commits with the rows that use it or not at all.
        """
        senders = sorted({tx.sender for tx in new})
        locked = conn.execute(
            select(tx_lanes.c.address, tx_lanes.c.next_nonce)
            .where(tx_lanes.c.chain_id == self.chain_id, tx_lanes.c.address.in_(senders))
            .with_for_update()
        )
        next_nonce = {address: nonce for address, nonce in locked}
        assert set(next_nonce) == set(senders), (senders, next_nonce)
        rows = []
        for tx in new:
            nonce = next_nonce[tx.sender]
            next_nonce[tx.sender] = nonce + 1
            rows.append(
                {
                    "idempotency_key": tx.idempotency_key,
                    "chain_id": self.chain_id,
                    "sender": tx.sender,
                    "nonce": nonce,
                    "to_address": tx.to,
                    "data": tx.data,
                    "value": tx.value,
                    "gas_limit": tx.gas_limit,
                    "status": TxStatus.QUEUED.value,
                    "attempts": 0,
                    "created_at": now,
                    "updated_at": now,
                }
            )
        conn.execute(
            update(tx_lanes)
            .where(
                tx_lanes.c.chain_id == self.chain_id,
                tx_lanes.c.address == bindparam("lane"),
            )
            .values(next_nonce=bindparam("next")),
            [{"lane": lane, "next": nonce} for lane, nonce in next_nonce.items()],
        )
        ids = conn.execute(
            insert(txs).returning(txs.c.id, sort_by_parameter_order=True), rows
        ).scalars()
        records = self.by_ids(conn, list(ids))
        self._append_history(
            conn,
            [
                {
                    "tx_id": record.id,
                    "status": TxStatus.QUEUED.value,
                    "event": "queued",
                    "tx_hash": None,
                    "detail": f"nonce {record.nonce} of {record.sender}",
                    "at": now,
                }
                for record in records
            ],
        )
        return records

    def open_records(self, conn: Connection, sender: str, limit: int) -> list[TxRecord]:
        """The lane's unfinished transactions, lowest nonce first (the order the chain mines)."""
        rows = conn.execute(
            select(txs)
            .where(
                txs.c.chain_id == self.chain_id,
                txs.c.sender == sender,
                txs.c.status.in_(OPEN_STATUSES),
            )
            .order_by(txs.c.nonce)
            .limit(limit)
        )
        return [_record(row) for row in rows]

    # -- attempts --

    def attempts_of(self, conn: Connection, tx_ids: Sequence[int]) -> dict[int, list[Attempt]]:
        """Every attempt of each record, oldest first."""
        found: dict[int, list[Attempt]] = {tx_id: [] for tx_id in tx_ids}
        for chunk in _chunks(tx_ids):
            rows = conn.execute(
                select(tx_attempts)
                .where(one_of(conn, tx_attempts.c.tx_id, chunk))
                .order_by(tx_attempts.c.id)
            )
            for attempt in map(_attempt, rows):
                found[attempt.tx_id].append(attempt)
        return found

    def add_attempts(self, conn: Connection, new: Sequence[NewAttempt], now: int) -> None:
        """Stores signed attempts before they are broadcast, so their hashes survive a crash."""
        if not new:
            return
        conn.execute(
            insert(tx_attempts),
            [
                {
                    "tx_id": attempt.tx_id,
                    "tx_hash": attempt.tx_hash,
                    "raw": attempt.raw,
                    "max_fee_per_gas": attempt.fees.max_fee_per_gas,
                    "max_priority_fee_per_gas": attempt.fees.max_priority_fee_per_gas,
                    "signed_at": now,
                    "broadcast_at": None,
                }
                for attempt in new
            ],
        )
        conn.execute(
            update(txs)
            .where(txs.c.id == bindparam("_id"))
            .values(
                attempts=txs.c.attempts + 1,
                max_fee_per_gas=bindparam("_max_fee"),
                max_priority_fee_per_gas=bindparam("_tip"),
                tx_hash=bindparam("_hash"),
                updated_at=now,
            ),
            [
                {
                    "_id": attempt.tx_id,
                    "_max_fee": attempt.fees.max_fee_per_gas,
                    "_tip": attempt.fees.max_priority_fee_per_gas,
                    "_hash": attempt.tx_hash,
                }
                for attempt in new
            ],
        )

    def mark_broadcast(self, conn: Connection, tx_hashes: Sequence[bytes], now: int) -> None:
        """A node acknowledged these attempts (or a lookup found them)."""
        if tx_hashes:
            conn.execute(
                update(tx_attempts)
                .where(tx_attempts.c.tx_hash == bindparam("_hash"))
                .values(broadcast_at=now),
                [{"_hash": tx_hash} for tx_hash in tx_hashes],
            )

    # -- status changes --

    def apply(self, conn: Connection, changes: Sequence[Change], now: int) -> None:
        """Writes each change to its row and appends its history entry."""
        if not changes:
            return
        # Several changes of one row in one call (mined, then confirmed) set its columns in
        # order, the last status winning; each still gets its own history entry.
        merged: dict[int, dict[str, Any]] = {}
        for change in changes:
            fields = dict(change.fields or {})
            assert "status" not in fields and "id" not in fields, change
            values = merged.setdefault(change.tx_id, {})
            values.update(fields)
            values["status"] = change.status.value
        by_columns: dict[tuple[str, ...], list[dict[str, Any]]] = {}
        for tx_id, values in merged.items():
            columns = tuple(sorted(values))
            by_columns.setdefault(columns, []).append(
                {"_id": tx_id, **{f"_{k}": v for k, v in values.items()}}
            )
        for columns, params in by_columns.items():
            conn.execute(
                update(txs)
                .where(txs.c.id == bindparam("_id"))
                .values(updated_at=now, **{column: bindparam(f"_{column}") for column in columns}),
                params,
            )
        self._append_history(
            conn,
            [
                {
                    "tx_id": change.tx_id,
                    "status": change.status.value,
                    "event": change.event,
                    "tx_hash": change.tx_hash,
                    "detail": change.detail,
                    "at": now,
                }
                for change in changes
            ],
        )

    def history(self, conn: Connection, tx_id: int) -> list[HistoryEntry]:
        rows = conn.execute(
            select(tx_history).where(tx_history.c.tx_id == tx_id).order_by(tx_history.c.id)
        )
        return [
            HistoryEntry(
                status=TxStatus(row.status),
                event=row.event,
                tx_hash=None if row.tx_hash is None else bytes(row.tx_hash),
                detail=row.detail,
                at=row.at,
            )
            for row in rows
        ]

    def _append_history(self, conn: Connection, rows: list[dict[str, Any]]) -> None:
        if rows:
            conn.execute(insert(tx_history), rows)
