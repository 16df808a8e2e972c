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

Who funds a refund or a dispute freeze is chosen when it is sent, from the payment's state on
chain (one JSON-RPC batch of reads per step, for those rows only): the merchant when the escrow
lets it fund the amount, otherwise the operator or the arbiter (``merchant_can_fund``). A
payment has at most one operation in flight (the commands refuse a second, the outbox claims
one per payment), so the state read is the state the operation meets. A transaction already
sent for the rows is watched as it was sent, whatever the chain says now.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from eth_abi import decode
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
from engine.chain.rpc import RpcCall, data, ok
from engine.chain.txmanager.manager import TxManager
from engine.domain.errors import DomainError
from engine.domain.ids import PaymentTerms
from engine.domain.money import BPS_DENOMINATOR
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
# Outbox kinds funded by the merchant or, beyond what the escrow lets it fund, by the sender.
FUNDED_KINDS = frozenset({"refund", "open_dispute"})
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


def merchant_can_fund(amount: int, refundable: int, merchant_funded: int, max_fee_bps: int) -> bool:
    """Whether the escrow lets the merchant fund ``amount`` more of a payment's refunds and
    dispute freezes, given its ``refundable`` and what the merchant ``merchant_funded`` of it.

    The escrow bounds merchant funding by the merchant's net: all it funds of a payment stays
    within ``floor((refundable + funded) * (10⁴ - maxFeeBps) / 10⁴)``, its share at the largest
    fee the payer allowed, and refuses more (``MerchantFundingExceeded``). An amount beyond what
    is left of that is funded in whole by the operator (refund) or the arbiter (dispute), as a
    processor funds a refund that includes its fee; never split, since one command is one
    escrow operation.
    """
    bound = (refundable + merchant_funded) * (BPS_DENOMINATOR - max_fee_bps) // BPS_DENOMINATOR
    return amount <= bound - merchant_funded


def batch_op(row: OutboxRow, *, merchant_funds: bool) -> BatchOp:
    """The escrow operation an outbox row asks for (payloads are written by the commands);
    ``merchant_funds`` says who funds a refund and is ignored by the other kinds."""
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
        return BatchOp.refund(terms, seq, amount, merchant_funds=merchant_funds)
    raise ValueError(f"no escrow operation for outbox kind {row.kind!r}")


def arbiter_call(escrow: Contract, row: OutboxRow, *, merchant_funds: bool) -> bytes:
    """The calldata of the arbiter's dispute call an outbox row asks for; ``merchant_funds``
    says whether the merchant (which approved the arbiter with ``approveFunding``) or the
    arbiter funds an opened dispute."""
    payload = row.payload
    terms = terms_tuple(PaymentTerms.from_dict(payload["terms"]))  # type: ignore[arg-type]
    seq = int(payload["seq"])  # type: ignore[arg-type]
    if row.kind == "open_dispute":
        amount = int(payload["amount"])  # type: ignore[arg-type]
        calldata = escrow.encode_abi("openDispute", args=[terms, seq, amount, merchant_funds])
    elif row.kind == "resolve_dispute":
        payer_wins = payload["payer_wins"]
        if not isinstance(payer_wins, bool):
            raise TypeError("payer_wins must be a boolean")
        calldata = escrow.encode_abi("resolveDispute", args=[terms, seq, payer_wins])
    else:
        raise ValueError(f"no arbiter call for outbox kind {row.kind!r}")
    return bytes.fromhex(calldata[2:])


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
        funded = [row for row in claim.rows if row.kind in FUNDED_KINDS]
        merchant_funded, unread = (
            self._merchant_funded(funded, report) if funded else (set(), set())
        )
        rows = [row for row in claim.rows if row.op_id not in unread]
        batched = [row for row in rows if row.kind not in ARBITER_KINDS]
        for first in range(0, len(batched), self._batch_ops_max):
            self._submit_batch(
                batched[first : first + self._batch_ops_max], merchant_funded, report
            )
        for row in rows:
            if row.kind in ARBITER_KINDS:
                self._submit_arbiter_call(row, row.op_id in merchant_funded, report)
        return report

    def _merchant_funded(
        self, rows: Sequence[OutboxRow], report: RelayReport
    ) -> tuple[set[str], set[str]]:
        """The op ids of the refund and dispute ``rows`` the merchant funds, read from the
        escrow in one JSON-RPC batch, and those whose payment could not be read (failed, to
        go again)."""
        escrow = self._escrow.address
        readable: list[tuple[OutboxRow, PaymentTerms, int]] = []
        for row in rows:
            try:
                terms = PaymentTerms.from_dict(row.payload["terms"])  # type: ignore[arg-type]
                readable.append((row, terms, int(row.payload["amount"])))  # type: ignore[arg-type]
            except (DomainError, ValueError, KeyError, TypeError):
                continue  # a payload no call can carry: sending fails it as malformed
        calls: list[RpcCall] = []
        for _, payment, _ in readable:
            payment_id = payment.payment_hash(self._txm.chain_id, escrow)
            for view in ("payments", "merchantFunded"):
                calldata = self._escrow.encode_abi(view, args=[payment_id])
                calls.append(("eth_call", [{"to": escrow, "data": calldata}, "latest"]))
        try:
            results = self._txm.rpc.batch(calls)
        except ChainError as error:
            self._fail(
                [row for row, _, _ in readable], f"{type(error).__name__}: {error}", True, report
            )
            return set(), {row.op_id for row, _, _ in readable}
        merchant_funds: set[str] = set()
        unread: list[OutboxRow] = []
        problem = ""
        for (row, payment, amount), state, funded in zip(
            readable, results[::2], results[1::2], strict=True
        ):
            try:
                _, refundable, _ = decode(["uint120", "uint120", "uint16"], data(ok(state)))
                (merchant_funded,) = decode(["uint256"], data(ok(funded)))
            except ChainError as error:
                unread.append(row)
                problem = f"{type(error).__name__}: {error}"
                continue
            if merchant_can_fund(amount, refundable, merchant_funded, payment.max_fee_bps):
                merchant_funds.add(row.op_id)
        if unread:
            self._fail(unread, problem, True, report)
        return merchant_funds, {row.op_id for row in unread}

    def _submit_batch(
        self, rows: Sequence[OutboxRow], merchant_funded: set[str], report: RelayReport
    ) -> None:
        def request() -> _Request:
            key = "relay:" + hashlib.sha256(",".join(r.op_id for r in rows).encode()).hexdigest()
            ops = [batch_op(row, merchant_funds=row.op_id in merchant_funded) for row in rows]
            calldata = bytes.fromhex(
                self._escrow.encode_abi("settleBatch", args=[encode_batch(ops), False])[2:]
            )
            chosen, sent = self._key_for(rows, itertools.chain([key], _tries(key + _ESTIMATED)))
            return _Request(
                chosen,
                calldata if sent is None else sent,
                batch_gas_limit(ops) if chosen == key else None,
            )

        self._send(rows, self._operator, request, report)

    def _submit_arbiter_call(
        self, row: OutboxRow, merchant_funds: bool, report: RelayReport
    ) -> None:
        def request() -> _Request:
            key, sent = self._key_for([row], _tries(f"relay:{row.op_id}{_ESTIMATED}"))
            calldata = arbiter_call(self._escrow, row, merchant_funds=merchant_funds)
            return _Request(key, calldata if sent is None else sent, None)

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

    def _key_for(self, rows: Sequence[OutboxRow], keys: Iterator[str]) -> tuple[str, bytes | None]:
        """The first of ``keys`` whose transaction is unknown or still may succeed, and the
        calldata that transaction was sent with (None: not sent yet).

        Rows claimed for the first time, or again after a crash, find their earlier
        transaction under the first key and wait for it rather than send another; it keeps the
        calldata it was sent with, since the funder chosen then may not be the one the chain
        suggests once it applied. Rows whose transaction failed under the gas bound, or lost
        its nonce to another one, go again as a new transaction under the next key (the first
        after the bound is estimated).
        """
        first = next(keys)
        if all(row.attempts <= 1 for row in rows):
            return first, None
        for key in itertools.chain([first], keys):
            try:
                earlier = self._txm.get(key)
            except UnknownIdempotencyKey:
                return key, None
            if earlier.status not in (TxStatus.FAILED, TxStatus.REPLACED):
                return key, earlier.data
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
