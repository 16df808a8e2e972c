"""The outbox relay (DESIGN §5.3): delivers claimed escrow operations as settleBatch calls,
and dispute operations as the arbiter's own calls.

Each batch of claimed rows becomes one non-atomic ``settleBatch`` through the transaction
manager, under an idempotency key derived from its op ids: a relay that crashed after submitting and
claims the same rows again gets the same transaction back instead of sending another. A batch
is non-atomic so that one refused operation (a payer without funds, say) does not hold back
the others; the escrow logs it as ``OperationFailed`` and the chain mirror books that.

A step claims up to ``batches_per_step`` batches' worth of rows and sends each batch under
``batch_gas_limit``, a bound per operation kind, rather than an estimate: estimating a batch
was the slowest part of sending it (about 120 ms per 100 operations on anvil, profiled).
Should the bound fall short, the escrow reverts the batch with ``BatchOutOfGas``; its rows fail
retryably and go again, as a new transaction, under an estimate.

Rows complete once the transaction is confirmed; that is delivery, not success, which the
mirror learns from the logs. An estimated transaction that reverted as a whole fails its rows
for good (the same bytes would revert again); one whose nonce went to another transaction, or
that could not be submitted for a passing reason, fails them retryably. An operation the escrow has
already applied is refused by its sequence number when sent again, so a re-sent operation
changes nothing on chain.

Disputes are not batch operations: the escrow takes ``openDispute`` and ``resolveDispute`` from
its arbiter only. Each such row is sent as a transaction of its own on the arbiter's lane (the
batches stay on the operator's), under a key derived from its op id, and is watched, completed
and failed like a batch of one. Its gas is estimated, so a revert on chain is final; a refusal
the escrow gives before it is sent (a stale sequence, no open dispute) fails it at once.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from web3.contract import Contract

from engine.chain.contracts.escrow import (
    BatchOp,
    Method,
    batch_gas_limit,
    encode_batch,
    terms_tuple,
)
from engine.chain.contracts.reverts import ContractReverted
from engine.chain.errors import ChainError, UnknownIdempotencyKey
from engine.chain.txmanager.manager import TxManager
from engine.domain.ids import PaymentTerms
from engine.pipeline.commands import fail_command, legs_from_json
from engine.pipeline.payment_batch import PaymentBatch
from engine.store.db import Database
from engine.store.event_store import Json
from engine.store.outbox import NotLeaseHolder, Outbox, OutboxRow, OutboxStatus
from engine.store.transactions import TxRecord, TxStatus

BATCH_OPS_MAX = 100  # the escrow takes 256 records per batch; smaller batches estimate faster
# Batches one step claims and sends: enough to keep the chain busy, few enough that a step's
# claim stays short and its leases do not run out before the batches are final.
BATCHES_PER_STEP = 10
# Watched transactions one read of the transaction manager looks up: the watch list grows
# while the chain lags behind the relay, and one read of all of it would grow with it.
WATCHED_PER_PAGE_MAX = 500
# Outbox kinds the escrow takes from its arbiter, one call each, not in a batch.
ARBITER_KINDS = frozenset({"open_dispute", "resolve_dispute"})
# Ends the key of a transaction sent under an estimate, not under the batch gas bound: a
# revert of it is final.
_ESTIMATED = ":estimated"


@dataclass(frozen=True, slots=True)
class _Request:
    """A transaction the relay submits: its idempotency key, calldata and gas limit (None:
    estimated)."""

    key: str
    data: bytes
    gas_limit: int | None


@dataclass
class RelayReport:
    claimed: int = 0
    submitted: int = 0
    completed: int = 0
    failed: int = 0
    problems: list[str] = field(default_factory=list)


def batch_op(row: OutboxRow) -> BatchOp:
    """The escrow operation an outbox row asks for (payloads are written by the commands)."""
    payload = row.payload
    terms = PaymentTerms.from_dict(payload["terms"])  # type: ignore[arg-type]
    amount = int(payload["amount"])  # type: ignore[arg-type]
    seq = int(payload["seq"])  # type: ignore[arg-type]
    if row.kind == "authorize":
        auth = bytes.fromhex(str(payload["authorization"]).removeprefix("0x"))
        return BatchOp.authorize(terms, amount, Method.ALLOWANCE, auth)
    if row.kind == "capture":
        fee_bps = int(payload["fee_bps"])  # type: ignore[arg-type]
        legs = legs_from_json(payload["legs"]) if "legs" in payload else ()
        return BatchOp.capture(terms, seq, amount, fee_bps, legs)
    if row.kind == "void":
        return BatchOp.void(terms, seq, amount)
    if row.kind == "refund":
        return BatchOp.refund(terms, seq, amount, merchant_funds=True)
    raise ValueError(f"no escrow operation for outbox kind {row.kind!r}")


def arbiter_call(escrow: Contract, row: OutboxRow) -> bytes:
    """The calldata of the arbiter's dispute call an outbox row asks for; the merchant funds
    a dispute (it approved the arbiter with ``approveFunding``)."""
    payload = row.payload
    terms = terms_tuple(PaymentTerms.from_dict(payload["terms"]))  # type: ignore[arg-type]
    seq = int(payload["seq"])  # type: ignore[arg-type]
    if row.kind == "open_dispute":
        amount = int(payload["amount"])  # type: ignore[arg-type]
        data = escrow.encode_abi("openDispute", args=[terms, seq, amount, True])
    elif row.kind == "resolve_dispute":
        payer_wins = payload["payer_wins"]
        if not isinstance(payer_wins, bool):
            raise TypeError("payer_wins must be a boolean")
        data = escrow.encode_abi("resolveDispute", args=[terms, seq, payer_wins])
    else:
        raise ValueError(f"no arbiter call for outbox kind {row.kind!r}")
    return bytes.fromhex(data[2:])


def _tries(key: str) -> Iterator[str]:
    """``key``, then a new key for each further transaction the same rows need."""
    yield key
    for attempt in itertools.count(2):
        yield f"{key}:try{attempt}"


class Relay:
    def __init__(
        self,
        db: Database,
        outbox: Outbox,
        txmanager: TxManager,
        escrow: Contract,
        worker_id: str,
        clock: Callable[[], int],
        *,
        operator: str,
        arbiter: str,
        batch_ops_max: int = BATCH_OPS_MAX,
        batches_per_step: int = BATCHES_PER_STEP,
    ) -> None:
        """``operator`` and ``arbiter`` are the transaction manager's lanes (signer addresses)
        for batches and for dispute calls."""
        self._db = db
        self._outbox = outbox
        self._txm = txmanager
        self._escrow = escrow
        self._worker_id = worker_id
        self._clock = clock
        self._operator = operator
        self._arbiter = arbiter
        self._batch_ops_max = batch_ops_max
        self._batches_per_step = batches_per_step
        # Submitted transactions (batches, arbiter calls) not yet final, by key. After a restart
        # their rows come back once their lease runs out, and the same claim finds the same
        # transaction.
        self._watching: dict[str, tuple[OutboxRow, ...]] = {}

    @property
    def busy(self) -> bool:
        return bool(self._watching)

    def step(self, now: int | None = None) -> RelayReport:
        """Finish what the chain settled, then claim and submit up to ``batches_per_step``
        new batches; ``now`` is the caller's clock reading, if it has one for the round."""
        report = RelayReport()
        watched = list(self._watching)
        for first in range(0, len(watched), WATCHED_PER_PAGE_MAX):
            for record in self._txm.get_many(watched[first : first + WATCHED_PER_PAGE_MAX]):
                if record.is_final:
                    self._finish(record, self._watching.pop(record.idempotency_key), report)
        limit = self._batch_ops_max * self._batches_per_step
        with self._db.transaction() as conn:
            claim = self._outbox.claim(
                conn, self._worker_id, self._clock() if now is None else now, limit
            )
        report.claimed = len(claim.rows)
        batched = [row for row in claim.rows if row.kind not in ARBITER_KINDS]
        for first in range(0, len(batched), self._batch_ops_max):
            self._submit_batch(batched[first : first + self._batch_ops_max], report)
        for row in claim.rows:
            if row.kind in ARBITER_KINDS:
                self._submit_arbiter_call(row, report)
        return report

    def _submit_batch(self, rows: Sequence[OutboxRow], report: RelayReport) -> None:
        def request() -> _Request:
            key = "relay:" + hashlib.sha256(",".join(r.op_id for r in rows).encode()).hexdigest()
            ops = [batch_op(row) for row in rows]
            data = bytes.fromhex(
                self._escrow.encode_abi("settleBatch", args=[encode_batch(ops), False])[2:]
            )
            chosen = self._key_for(rows, itertools.chain([key], _tries(key + _ESTIMATED)))
            return _Request(chosen, data, batch_gas_limit(ops) if chosen == key else None)

        self._send(rows, self._operator, request, report)

    def _submit_arbiter_call(self, row: OutboxRow, report: RelayReport) -> None:
        def request() -> _Request:
            key = self._key_for([row], _tries(f"relay:{row.op_id}{_ESTIMATED}"))
            return _Request(key, arbiter_call(self._escrow, row), None)

        self._send([row], self._arbiter, request, report)

    def _send(
        self,
        rows: Sequence[OutboxRow],
        lane: str,
        request: Callable[[], _Request],
        report: RelayReport,
    ) -> None:
        """Submit the transaction ``request`` builds for ``rows`` on ``lane`` and watch it."""
        try:
            built = request()
            self._txm.submit(
                self._escrow.address,
                built.data,
                idempotency_key=built.key,
                lane=lane,
                gas_limit=built.gas_limit,
            )
        except (ValueError, KeyError, TypeError) as error:  # a payload no call can carry
            self._fail(rows, f"malformed operation: {error}", False, report)
            return
        except ChainError as error:
            # Reverted estimates are permanent: a non-atomic batch only reverts as a whole for
            # reasons that do not pass (malformed, not the operator), and an arbiter call the
            # escrow refuses now would be refused again. The rest may pass.
            permanent = isinstance(error, ContractReverted)
            self._fail(rows, f"{type(error).__name__}: {error}", not permanent, report)
            return
        report.submitted += len(rows)
        self._watching[built.key] = tuple(rows)

    def _key_for(self, rows: Sequence[OutboxRow], keys: Iterator[str]) -> str:
        """The first of ``keys`` whose transaction is unknown or still may succeed.

        Rows claimed for the first time, or again after a crash, find their earlier
        transaction under the first key and wait for it rather than send another. Rows whose
        transaction failed under the gas bound, or lost its nonce to another one, go again as a
        new transaction under the next key (the first after the bound is estimated).
        """
        first = next(keys)
        if all(row.attempts <= 1 for row in rows):
            return first
        for key in itertools.chain([first], keys):
            try:
                earlier = self._txm.get(key)
            except UnknownIdempotencyKey:
                return key
            if earlier.status not in (TxStatus.FAILED, TxStatus.REPLACED):
                return key
        raise AssertionError("the keys of a retry never run out")

    def _finish(self, record: TxRecord, rows: Sequence[OutboxRow], report: RelayReport) -> None:
        if record.status is TxStatus.CONFIRMED:
            result: dict[str, Json] = {
                "tx_hash": "0x" + (record.tx_hash or b"").hex(),
                "block_number": record.block_number or 0,
            }
            with self._db.transaction() as conn:
                # A row claimed again since (its lease ran out) is left to that claim.
                completed = self._outbox.complete_many(
                    conn, [row.op_id for row in rows], self._worker_id, result
                )
            report.completed += len(completed)
            return
        reason = f"transaction {record.status.value}: {record.error_code or ''}"
        # A batch sent under the gas bound that reverted may have run short of gas
        # (BatchOutOfGas): its rows go again, estimated. An estimated one reverted for good.
        estimated = _ESTIMATED in record.idempotency_key
        retryable = record.status is TxStatus.REPLACED or (
            record.status is TxStatus.FAILED and not estimated
        )
        self._fail(rows, reason, retryable, report)

    def _fail(
        self, rows: Sequence[OutboxRow], reason: str, retryable: bool, report: RelayReport
    ) -> None:
        now = self._clock()
        with self._db.transaction() as conn:
            dead: list[str] = []
            for row in rows:
                try:
                    failed = self._outbox.fail(
                        conn, row.op_id, self._worker_id, reason, retryable, now
                    )
                except NotLeaseHolder:
                    continue  # claimed again since: that claim decides
                if failed.status is OutboxStatus.DEAD:
                    dead.append(row.payment_key)
            if dead:
                batch = PaymentBatch(conn, self._db, payment_ids=dead)
                for payment_id in dead:
                    fail_command(batch, payment_id, reason, now)
                batch.flush()
        report.failed += len(rows)
        report.problems.append(reason)
