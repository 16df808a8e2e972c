"""Payment commands (DESIGN §5.2): decide with the domain, write events, outbox and command in
one SQL transaction.

Each command carries the caller's idempotency key (the API's ``Idempotency-Key``): a retry with
the same key and arguments returns the first outcome without deciding again; the same key with
other arguments is refused. A command writes its events (a new payment's ``PaymentRequested``;
chain facts are written later by the mirror), the escrow operation it owes (an outbox row whose
``op_id`` is derived from the key) and its own row, or nothing at all.

Disputes are commands like the others: ``OpenDispute`` freezes captured money (funded by the
merchant, through the escrow's ``approveFunding``) and ``ResolveDispute`` releases it to the
winner. The escrow takes them from its arbiter only, not in a batch; the relay sends their
outbox rows on the arbiter's lane.

A payment has at most one escrow operation on its way at a time. The escrow checks each against
the payment's operation sequence, which the command fixes from the confirmed projection; a
second command while one is in flight could only be judged against stale amounts, so it gets
``CommandConflict`` instead. Commands serialise on the event log's append lock, so of two
concurrent commands on one payment exactly one is accepted.

``PaymentService.execute`` takes a batch of commands (what an API grouping concurrent requests
into one commit, or a merchant's bulk request, hands in): each is decided on its own, in order,
and the accepted ones are written together through a ``PaymentBatch``, a few statements per
table for the whole batch. The one-command methods are batches of one.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import ClassVar, TypeAlias

from sqlalchemy import Connection

from engine.domain.errors import DomainError
from engine.domain.events import Failed, Party, PaymentRequested
from engine.domain.ids import IdPrefix, PaymentTerms, new_id
from engine.domain.money import Leg
from engine.domain.payment import (
    decide_capture,
    decide_open_dispute,
    decide_refund,
    decide_request,
    decide_resolve_dispute,
    decide_void,
)
from engine.pipeline.payment_batch import CommandRow, PaymentBatch
from engine.store.command_log import commands_by_key
from engine.store.db import Database
from engine.store.event_store import Json, canonical_json
from engine.store.outbox import NewOperation, Outbox
from engine.store.projections import ProjectedPayment

IDEMPOTENCY_KEY_LENGTH_MAX = 150
_OP_KIND = {
    "create": "authorize",
    "capture": "capture",
    "void": "void",
    "refund": "refund",
    "open_dispute": "open_dispute",
    "resolve_dispute": "resolve_dispute",
}
# The chain fact that completes each command.
COMPLETING_EVENT = {
    "create": "authorized",
    "capture": "captured",
    "void": "voided",
    "refund": "refunded",
    "open_dispute": "dispute_opened",
    "resolve_dispute": "dispute_resolved",
}


class CommandError(Exception):
    """A command refused before anything was written; ``code`` is the stable contract."""

    code: ClassVar[str] = "command_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class UnknownPayment(CommandError):
    code = "unknown_payment"

    def __init__(self, payment_id: str) -> None:
        super().__init__(f"no payment {payment_id!r}")


class CommandConflict(CommandError):
    """Another command on the payment is still on its way to the chain."""

    code = "conflict"


class IdempotencyKeyReused(CommandError):
    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(f"idempotency key {key!r} was used for another command")


class InvalidIdempotencyKey(CommandError):
    code = "invalid_idempotency_key"


class InvalidLegs(CommandError):
    code = "invalid_legs"


@dataclass(frozen=True, slots=True)
class CommandOutcome:
    payment_id: str
    command: str
    op_id: str

    def to_dict(self) -> dict[str, Json]:
        return {"payment_id": self.payment_id, "command": self.command, "op_id": self.op_id}


def op_id_for(idempotency_key: str) -> str:
    return "op_" + hashlib.sha256(idempotency_key.encode()).hexdigest()[:40]


@dataclass(frozen=True, slots=True)
class Create:
    """Request a payment and owe the escrow its authorization (signed by the payer)."""

    key: str
    terms: PaymentTerms
    amount: int
    authorization: bytes


@dataclass(frozen=True, slots=True)
class Capture:
    """Capture ``amount`` of the hold; ``legs`` (at most four) are paid out of the merchant's
    share, within the fee budget the payer signed."""

    key: str
    payment_id: str
    amount: int
    fee_bps: int
    legs: tuple[Leg, ...] = ()


@dataclass(frozen=True, slots=True)
class Void:
    key: str
    payment_id: str


@dataclass(frozen=True, slots=True)
class Refund:
    key: str
    payment_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class OpenDispute:
    """Freeze ``amount`` of the captured money while the dispute is open (the merchant funds
    it)."""

    key: str
    payment_id: str
    amount: int


@dataclass(frozen=True, slots=True)
class ResolveDispute:
    """Close the open dispute: the frozen money goes to the payer or back to the merchant."""

    key: str
    payment_id: str
    winner: Party


Command: TypeAlias = Create | Capture | Void | Refund | OpenDispute | ResolveDispute
# What a command in a batch may get instead of an outcome; it wrote nothing.
Refusal: TypeAlias = CommandError | DomainError
# Called inside a batch's transaction with its results (see ``PaymentService.execute``).
Within: TypeAlias = Callable[[Connection, Sequence["CommandOutcome | Refusal"]], None]


class PaymentService:
    """The write side of payments against one escrow (``chain_id``, ``escrow``)."""

    def __init__(self, db: Database, chain_id: int, escrow: str, clock: Callable[[], int]) -> None:
        self._db = db
        self._chain_id = chain_id
        self._escrow = escrow
        self._clock = clock
        self._outbox = Outbox(db)

    def create(
        self, key: str, terms: PaymentTerms, amount: int, authorization: bytes
    ) -> CommandOutcome:
        return self._one(Create(key, terms, amount, authorization))

    def capture(
        self, key: str, payment_id: str, amount: int, fee_bps: int, legs: Sequence[Leg] = ()
    ) -> CommandOutcome:
        return self._one(Capture(key, payment_id, amount, fee_bps, tuple(legs)))

    def void(self, key: str, payment_id: str) -> CommandOutcome:
        return self._one(Void(key, payment_id))

    def refund(self, key: str, payment_id: str, amount: int) -> CommandOutcome:
        return self._one(Refund(key, payment_id, amount))

    def open_dispute(self, key: str, payment_id: str, amount: int) -> CommandOutcome:
        return self._one(OpenDispute(key, payment_id, amount))

    def resolve_dispute(self, key: str, payment_id: str, winner: Party) -> CommandOutcome:
        return self._one(ResolveDispute(key, payment_id, winner))

    def execute(
        self, commands: Sequence[Command], *, within: Within | None = None
    ) -> list[CommandOutcome | Refusal]:
        """Decide ``commands`` in order, each on its own, and commit the accepted ones in one
        SQL transaction: a batch costs a handful of statements however many it holds.

        A refused command gets its error in its place and writes nothing; a later command of
        the batch sees the earlier accepted ones (a second command on one payment is a
        conflict, a repeated key returns the first outcome).

        ``within`` runs last inside the same transaction, with the results: what the caller
        must record together with the commands (the API's idempotency record and details)
        commits with them or not at all; raising from it writes nothing.
        """
        if not commands:
            return []
        with self._db.transaction() as conn:
            batch = PaymentBatch(
                conn,
                self._db,
                payment_ids={c.payment_id for c in commands if not isinstance(c, Create)},
            )
            earlier = _earlier(conn, [c.key for c in commands if _valid_key(c.key)])
            now = self._clock()
            operations: list[NewOperation] = []
            results: list[CommandOutcome | Refusal] = []
            for command in commands:
                try:
                    results.append(self._decide(batch, earlier, command, now, operations))
                except (CommandError, DomainError) as refusal:
                    results.append(refusal)
            batch.flush()
            if operations:
                self._outbox.enqueue_many(conn, operations, now)
            if within is not None:
                within(conn, results)
        return results

    # ── internals ─────────────────────────────────────────────────────────────────────

    def _one(self, command: Command) -> CommandOutcome:
        [result] = self.execute([command])
        if isinstance(result, CommandOutcome):
            return result
        raise result

    def _decide(
        self,
        batch: PaymentBatch,
        earlier: dict[str, _Earlier],
        command: Command,
        now: int,
        operations: list[NewOperation],
    ) -> CommandOutcome:
        kind, request = _request(command)
        if not _valid_key(command.key):
            raise InvalidIdempotencyKey(
                f"an idempotency key is 1 to {IDEMPOTENCY_KEY_LENGTH_MAX} characters"
            )
        request_text = canonical_json(dict(request))
        seen = earlier.get(command.key)
        if seen is not None:
            if (seen.kind, seen.request) != (kind, request_text):
                raise IdempotencyKeyReused(command.key)
            return seen.outcome
        payload: dict[str, Json]
        if isinstance(command, Create):
            payment_id = new_id(IdPrefix.PAYMENT)
            [requested] = decide_request(payment_id, command.terms, command.amount, now)
            assert isinstance(requested, PaymentRequested)
            batch.create(requested, command.terms.payment_hash(self._chain_id, self._escrow))
            payload = {"seq": 0, **request}
        else:
            payment_id = command.payment_id
            current = _current(batch, payment_id)
            payload = {
                "terms": dict(current.payment.terms.to_dict()),
                "seq": current.chain_seq,
            }
            match command:
                case Capture(amount=amount, fee_bps=fee_bps, legs=legs):
                    decide_capture(current.payment, amount, now, fee_bps=fee_bps, extra_legs=legs)
                    payload |= {"amount": amount, "fee_bps": fee_bps}
                    if legs:
                        payload["legs"] = _legs_json(legs)
                case Void():
                    decide_void(current.payment, now)
                    payload["amount"] = current.payment.capturable
                case Refund(amount=amount):
                    decide_refund(current.payment, amount, now)
                    payload["amount"] = amount
                case OpenDispute(amount=amount):
                    decide_open_dispute(current.payment, amount, now)
                    payload["amount"] = amount
                case ResolveDispute(winner=winner):
                    decide_resolve_dispute(current.payment, winner, now)
                    payload["payer_wins"] = winner is Party.PAYER
        outcome = CommandOutcome(payment_id, kind, op_id_for(command.key))
        batch.accept(
            CommandRow(
                idempotency_key=command.key,
                payment_id=payment_id,
                kind=kind,
                request=request_text,
                op_id=outcome.op_id,
                outcome=canonical_json(outcome.to_dict()),
                created_at=now,
            )
        )
        operations.append(NewOperation(outcome.op_id, payment_id, _OP_KIND[kind], payload))
        earlier[command.key] = _Earlier(kind, request_text, outcome)
        return outcome


# ── hooks for the relay and the mirror, in their batches ────────────────────────────────


def settle_command(batch: PaymentBatch, payment_id: str, event_kind: str) -> None:
    """Mark the payment's command in flight applied when ``event_kind`` completes it."""
    row = batch.in_flight(payment_id)
    if row is not None and COMPLETING_EVENT[row.kind] == event_kind:
        batch.finish(payment_id, "applied")


def fail_command(batch: PaymentBatch, payment_id: str, reason: str, at: int) -> str | None:
    """The payment's command in flight will never reach the chain: free the payment, and fail
    a payment whose authorization was refused. Returns the failed command's kind."""
    row = batch.finish(payment_id, "failed", reason[:2000])
    if row is None:
        return None
    current = batch.payment(payment_id)
    if row.kind == "create" and current is not None and current.payment.authorized == 0:
        batch.append(
            payment_id, Failed(payment_id=payment_id, at=at, reason=reason[:200] or "failed")
        )
    return row.kind


@dataclass(frozen=True, slots=True)
class _Earlier:
    kind: str
    request: str  # canonical JSON
    outcome: CommandOutcome


def _valid_key(key: object) -> bool:
    return isinstance(key, str) and 1 <= len(key) <= IDEMPOTENCY_KEY_LENGTH_MAX


def _request(command: Command) -> tuple[str, dict[str, Json]]:
    """The command's kind and its arguments as stored (and compared on a retry)."""
    match command:
        case Create(terms=terms, amount=amount, authorization=authorization):
            return "create", {
                "terms": dict(terms.to_dict()),
                "amount": amount,
                "authorization": "0x" + authorization.hex(),
            }
        case Capture(payment_id=payment_id, amount=amount, fee_bps=fee_bps, legs=legs):
            request: dict[str, Json] = {
                "payment_id": payment_id,
                "amount": amount,
                "fee_bps": fee_bps,
            }
            if legs:  # a capture without legs keeps the request it always had
                request["legs"] = _legs_json(legs)
            return "capture", request
        case Void(payment_id=payment_id):
            return "void", {"payment_id": payment_id}
        case Refund(payment_id=payment_id, amount=amount):
            return "refund", {"payment_id": payment_id, "amount": amount}
        case OpenDispute(payment_id=payment_id, amount=amount):
            return "open_dispute", {"payment_id": payment_id, "amount": amount}
        case ResolveDispute(payment_id=payment_id, winner=winner):
            return "resolve_dispute", {"payment_id": payment_id, "winner": str(winner)}


def _legs_json(legs: tuple[Leg, ...]) -> list[Json]:
    if not all(isinstance(leg, Leg) for leg in legs):
        raise InvalidLegs("legs must be Leg(recipient, amount) values")
    return [dict(leg.to_dict()) for leg in legs]


def legs_from_json(value: Json) -> tuple[Leg, ...]:
    """The legs a capture's outbox payload carries (see ``_legs_json``)."""
    if not isinstance(value, list):
        raise TypeError("legs must be a list")
    legs = []
    for item in value:
        if not isinstance(item, dict):
            raise TypeError("a leg must be an object")
        legs.append(Leg(recipient=str(item["recipient"]), amount=int(str(item["amount"]))))
    return tuple(legs)


def _current(batch: PaymentBatch, payment_id: str) -> ProjectedPayment:
    current = batch.payment(payment_id) if isinstance(payment_id, str) else None
    if current is None:
        raise UnknownPayment(str(payment_id))
    busy = batch.in_flight(payment_id)
    if busy is not None:
        raise CommandConflict(
            f"payment {payment_id} has a {busy.kind} command on its way to the chain"
        )
    return current


def _earlier(conn: Connection, keys: list[str]) -> dict[str, _Earlier]:
    """The commands already accepted under ``keys``."""
    found: dict[str, _Earlier] = {}
    for key, row in commands_by_key(conn, keys).items():
        outcome = json.loads(row.outcome)
        found[key] = _Earlier(
            row.kind,
            row.request,
            CommandOutcome(outcome["payment_id"], outcome["command"], outcome["op_id"]),
        )
    return found
