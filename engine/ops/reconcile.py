"""Reconciliation (DESIGN §5.6): do the PSP, the ledger and the chain tell the same story?

Per payment, the escrow's ``payments(id)`` view (capturable, refundable) is compared with what
the ledger booked for that payment, and per asset the escrow's token balance with the ledger's
escrow accounts. The ledger side is read from the payment's non-voided postings (pending ones
count: the chain is read at its head, which already holds what awaits confirmation):

    capturable = net of escrow_held
    refundable = -(net of escrow_held + disputes + payer)

The second identity holds for every booking of ``ledger_events``: money the payer put in that
is neither held, frozen nor returned to the payer is captured money still refundable.

A mismatching payment gets one Conflicted event in its stream (the same discrepancy found again
adds none). ``repair`` re-syncs such a payment's books from the chain: every live entry of the
payment is reversed (posted) or voided (pending), newest first so no account dips below what
its flags allow, and the payment's escrow logs, read with eth_getLogs, are booked again through
``ledger_events`` in chain order; then everything is checked once more. The event store is not
rewritten: its history stays as recorded, with the Conflicted event telling why the books moved.

A conflicted payment is resolved (one ConflictResolved event, back to its underlying status:
the one its confirmed facts describe, those the mirror booked while it was conflicted
included) by the first run, with or without ``repair``, that finds it agreeing in every view
and its posted books agreeing with its own history: capturable and refundable of its
confirmed facts equal those of its posted entries. The second condition keeps a payment
conflicted when the chain holds a fact its stream never recorded (a capture behind the
engine's back, say): a repair makes its books right, but its status could not vouch for them.

A PSP view is optional (no PSP adapter exists yet): per payment, the status and amounts the
provider reports, compared with the payment's projection.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Final, cast

from eth_utils import to_checksum_address
from sqlalchemy import Connection, select
from web3 import Web3
from web3.contract import Contract
from web3.providers.base import JSONBaseProvider
from web3.types import FilterParams, LogReceipt

from engine.chain.contracts import logs as chain
from engine.chain.contracts.escrow import ESCROW_NAME, bind, erc20
from engine.chain.errors import ChainError
from engine.domain.events import (
    REASON_LENGTH_MAX,
    Authorized,
    Captured,
    Conflicted,
    DisputeOpened,
    DisputeResolved,
    Event,
    Party,
    Reclaimed,
    Refunded,
    Voided,
)
from engine.domain.money import Leg
from engine.domain.payment import Payment, apply, decide_resolve_conflict, start
from engine.store import projections
from engine.store.db import Database
from engine.store.event_store import ConcurrencyConflict, EventStore
from engine.store.ledger import LIVE_TABLES, Ledger
from engine.store.ledger_accounts import ESCROW_KINDS, AccountKind, AssetKey
from engine.store.ledger_entries import EntryState, NewEntry
from engine.store.ledger_events import entry_for
from engine.store.projections import stored_form
from engine.store.replay import PaymentHistory, payment_histories
from engine.store.schema import indexer_checkpoints, streams

# One JSON-RPC batch holds this many view calls; public providers refuse much larger ones.
CALLS_PER_BATCH_MAX: Final = 100
RPC_URL_ENV: Final = "SETTLE_RPC_URL"
_K = AccountKind


class RpcUrlMissing(ChainError):
    """Reconciliation reads the chain, and no RPC URL says where it is."""

    code: ClassVar[str] = "rpc_url_missing"


@dataclass(frozen=True, slots=True)
class ProviderView:
    """What the PSP reports for one payment; None where it does not say."""

    status: str | None = None
    captured: int | None = None
    refunded: int | None = None


@dataclass(frozen=True, slots=True)
class Mismatch:
    field: str
    ledger: int | str | None
    other: int | str | None
    payment: str | None = None  # None for an asset-wide mismatch
    asset: str | None = None
    source: str = "chain"  # the view that disagrees with the ledger: chain or psp

    def to_json(self) -> dict[str, Any]:
        shown: dict[str, Any] = {
            "field": self.field,
            "ledger": self.ledger,
            self.source: self.other,
        }
        if self.payment is not None:
            shown = {"payment": self.payment, **shown}
        if self.asset is not None:
            shown = {"asset": self.asset, **shown}
        return shown


@dataclass(frozen=True, slots=True)
class ReconcileReport:
    """Items are payments and assets; each either matches in every view or is mismatched."""

    matched: int
    mismatched: int
    details: tuple[Mismatch, ...]
    conflicted: tuple[str, ...] = ()  # payments this run marked conflicted
    repaired: tuple[str, ...] = ()  # payments whose books this run re-synced from the chain
    resolved: tuple[str, ...] = ()  # conflicted payments this run found agreeing again

    def to_json(self) -> dict[str, Any]:
        return {
            "matched": self.matched,
            "mismatched": self.mismatched,
            "details": [mismatch.to_json() for mismatch in self.details],
            "conflicted": list(self.conflicted),
            "repaired": list(self.repaired),
            "resolved": list(self.resolved),
        }


@dataclass(frozen=True, slots=True)
class ChainTarget:
    w3: Web3
    chain_id: int
    escrow: str

    def contract(self) -> Contract:
        return bind(self.w3, ESCROW_NAME, self.escrow)


@dataclass(slots=True)
class _Books:
    """One payment as the ledger booked it."""

    held: int = 0
    escrow_and_payer: int = 0  # net of escrow_held + disputes + payer

    @property
    def refundable(self) -> int:
        return -self.escrow_and_payer


@dataclass(slots=True)
class _Found:
    details: list[Mismatch] = field(default_factory=list)
    by_payment: dict[str, list[Mismatch]] = field(default_factory=dict)
    items: int = 0
    resolvable: list[str] = field(default_factory=list)  # conflicted, yet agreeing everywhere


def reconcile(
    db: Database,
    target: ChainTarget,
    *,
    now: int,
    provider: Mapping[str, ProviderView] | None = None,
    repair: bool = False,
) -> ReconcileReport:
    """Compare the three views, mark mismatching payments conflicted, and with ``repair``
    re-sync their books from the chain's logs and report the state after that."""
    found, histories = _compare(db, target, provider or {})
    conflicted = _mark_conflicted(db, histories, found, now)
    repaired: list[str] = []
    if repair and found.details:
        for payment_id in sorted(found.by_payment):
            if any(m.source == "chain" for m in found.by_payment[payment_id]):
                _resync(db, target, histories[payment_id], now)
                repaired.append(payment_id)
        # Read afresh: the histories now hold the Conflicted events marked above.
        found, histories = _compare(db, target, provider or {})
    resolved = _resolve(db, histories, found.resolvable, set(repaired), now)
    mismatched = len(found.by_payment) + len({m.asset for m in found.details if m.asset})
    return ReconcileReport(
        matched=found.items - mismatched,
        mismatched=mismatched,
        details=tuple(found.details),
        conflicted=tuple(conflicted),
        repaired=tuple(repaired),
        resolved=tuple(resolved),
    )


def _compare(
    db: Database, target: ChainTarget, provider: Mapping[str, ProviderView]
) -> tuple[_Found, dict[str, PaymentHistory]]:
    with db.snapshot() as conn:
        histories = payment_histories(conn, EventStore(db))
        books = _ledger_books(conn)
        posted_books = _ledger_books(conn, posted_only=True)
        ledger = Ledger()
        assets = {AssetKey(target.chain_id, h.requested.terms.token) for h in histories.values()}
        assets |= {a for a in ledger.trial_balance(conn) if a.chain_id == target.chain_id}
        held_by_asset = {
            asset: sum(
                balance.projected
                for account, balance in ledger.balances(conn, asset).items()
                if account.kind in ESCROW_KINDS
            )
            for asset in assets
        }
    ordered = sorted(histories)
    hashes = [
        histories[pid].requested.terms.payment_hash(target.chain_id, target.escrow)
        for pid in ordered
    ]
    token_order = sorted(assets)
    on_chain = _chain_views(target, hashes, [asset.token for asset in token_order])
    views = on_chain[: len(hashes)]
    balances = on_chain[len(hashes) :]

    found = _Found(items=len(ordered) + len(token_order))
    for payment_id, view in zip(ordered, views, strict=True):
        capturable, refundable = int(view[0]), int(view[1])
        booked = books.get(payment_id, _Books())
        for name, ledger_value, chain_value in (
            ("capturable", booked.held, capturable),
            ("refundable", booked.refundable, refundable),
        ):
            if ledger_value != chain_value:
                _add(found, Mismatch(name, ledger_value, chain_value, payment=payment_id))
        history = histories[payment_id]
        expected = provider.get(payment_id)
        if expected is not None:
            _compare_provider(found, history, expected)
        if (
            history.last_conflict is not None
            and payment_id not in found.by_payment
            and _recorded(history.projection(), posted_books.get(payment_id, _Books()))
        ):
            found.resolvable.append(payment_id)
    for asset, balance in zip(token_order, balances, strict=True):
        if held_by_asset[asset] != int(balance):
            _add(
                found,
                Mismatch("escrow_balance", held_by_asset[asset], int(balance), asset=str(asset)),
            )
    return found, histories


def _add(found: _Found, mismatch: Mismatch) -> None:
    found.details.append(mismatch)
    if mismatch.payment is not None:
        found.by_payment.setdefault(mismatch.payment, []).append(mismatch)


def _compare_provider(found: _Found, history: PaymentHistory, expected: ProviderView) -> None:
    payment = history.projection()
    # A conflicted payment is compared by the status a resolution would return it to, so the
    # flag itself neither counts as a new discrepancy nor keeps one open forever.
    status = payment.unflagged_status
    for name, engine_value, psp_value in (
        ("status", status.value, expected.status),
        ("captured", payment.captured, expected.captured),
        ("refunded", payment.refunded, expected.refunded),
    ):
        if psp_value is not None and engine_value != psp_value:
            _add(
                found,
                Mismatch(name, engine_value, psp_value, payment=history.payment_id, source="psp"),
            )


def _recorded(payment: Payment, posted: _Books) -> bool:
    """Whether the payment's history tells what its posted books do: its events are the
    confirmed facts, and only confirmed facts are posted."""
    return payment.capturable == posted.held and payment.refundable == posted.refundable


def _ledger_books(conn: Connection, *, posted_only: bool = False) -> dict[str, _Books]:
    a, e, p = LIVE_TABLES
    counted = (
        e.c.state == EntryState.POSTED.value
        if posted_only
        else e.c.state != EntryState.VOIDED.value
    )
    rows = conn.execute(
        select(e.c.payment_id, a.c.kind, p.c.amount)
        .join(e, e.c.id == p.c.entry_id)
        .join(a, a.c.id == p.c.account_id)
        .where(e.c.payment_id.is_not(None), counted)
    )
    books: dict[str, _Books] = {}
    for row in rows:
        booked = books.setdefault(row.payment_id, _Books())
        if row.kind == _K.ESCROW_HELD:
            booked.held += row.amount
        if row.kind in (_K.ESCROW_HELD, _K.DISPUTES, _K.PAYER):
            booked.escrow_and_payer += row.amount
    return books


def _chain_views(target: ChainTarget, hashes: Sequence[bytes], tokens: Sequence[str]) -> list[Any]:
    """``payments(id)`` of every hash, then ``balanceOf(escrow)`` of every token, in order;
    batched into few HTTP requests where the provider speaks JSON-RPC."""
    escrow = target.contract()
    calls = [escrow.functions.payments(h) for h in hashes] + [
        erc20(target.w3, token).functions.balanceOf(target.escrow) for token in tokens
    ]
    if not isinstance(target.w3.provider, JSONBaseProvider):
        return [call.call() for call in calls]
    results: list[Any] = []
    for start_index in range(0, len(calls), CALLS_PER_BATCH_MAX):
        with target.w3.batch_requests() as batch:
            for call in calls[start_index : start_index + CALLS_PER_BATCH_MAX]:
                batch.add(call)
            results.extend(cast(list[Any], batch.execute()))
    return results


def _reason(mismatches: Sequence[Mismatch]) -> str:
    text = "reconcile: " + "; ".join(
        f"{m.field} ledger {m.ledger} {m.source} {m.other}" for m in mismatches
    )
    return text[:REASON_LENGTH_MAX]


def _mark_conflicted(
    db: Database, histories: Mapping[str, PaymentHistory], found: _Found, now: int
) -> list[str]:
    """Append Conflicted to each mismatching payment, unless its newest Conflicted event already
    names this very discrepancy (a re-run must not pile up events)."""
    marked: list[str] = []
    store = EventStore(db)
    for payment_id, mismatches in sorted(found.by_payment.items()):
        history = histories[payment_id]
        reason = _reason(mismatches)
        if history.last_conflict == reason:
            continue
        event = Conflicted(payment_id=payment_id, at=now, reason=reason)
        with db.transaction() as conn:
            # The stream may have moved since the comparison read it (the mirror keeps
            # booking); the flag goes on top of whatever is there now.
            version = conn.execute(
                select(streams.c.version).where(streams.c.stream_id == history.stream_id)
            ).scalar_one()
            _append_flag(conn, store, history, event, version)
        marked.append(payment_id)
    return marked


def _resolve(
    db: Database,
    histories: Mapping[str, PaymentHistory],
    resolvable: Sequence[str],
    repaired: set[str],
    now: int,
) -> list[str]:
    """Append ConflictResolved to each payment found agreeing again, returning it to its
    underlying status (the one its facts describe). Unlike a conflict, a resolution is judged
    on the stream as it was compared: if the stream moved since, the next run judges it
    afresh."""
    resolved: list[str] = []
    store = EventStore(db)
    for payment_id in sorted(resolvable):
        history = histories[payment_id]
        payment = history.projection()
        if payment.underlying is None:
            raise AssertionError(f"{payment_id} is conflicted but never became so")
        how = "books re-synced from chain logs" if payment_id in repaired else "books"
        [event] = decide_resolve_conflict(
            payment, payment.underlying, f"reconcile: {how} match every view again", now
        )
        try:
            with db.transaction() as conn:
                _append_flag(conn, store, history, event, history.version)
        except ConcurrencyConflict:
            continue
        resolved.append(payment_id)
    return resolved


def _append_flag(
    conn: Connection, store: EventStore, history: PaymentHistory, event: Event, version: int
) -> None:
    """Append a flag (Conflicted, ConflictResolved) to the payment's stream, expected at
    ``version``, and fold it into the projection, in the caller's transaction."""
    store.append(conn, history.stream_id, version, [stored_form(event)])
    current = projections.load(conn, history.payment_id, lock=True)
    if current is not None:  # the projection moves with its stream
        projections.project(conn, current, [event], version + 1)


# ── repair ───────────────────────────────────────────────────────────────────────────────


def _resync(db: Database, target: ChainTarget, history: PaymentHistory, now: int) -> None:
    requested = history.requested
    payment_hash = requested.terms.payment_hash(target.chain_id, target.escrow)
    facts = _chain_facts(_payment_logs(db, target, payment_hash), history, now)
    ledger = Ledger()
    with db.transaction() as conn:
        live = ledger.entries_of_payment(conn, history.payment_id)
        generation = len(live)  # grows with every repair, so its keys never repeat
        reversed_ids = {entry.reverses_id for entry in live if entry.reverses_id is not None}
        for entry in reversed(live):
            if entry.reverses_id is not None or entry.id in reversed_ids:
                continue  # a reversal, or an entry an earlier repair already reversed
            if entry.state is EntryState.POSTED:
                ledger.reverse(conn, entry.key, _key(history, generation, f"rev{entry.id}"), now)
            elif entry.state is EntryState.PENDING:
                ledger.void(conn, entry.key, now)
        payment = start(requested)
        rebooked: list[NewEntry] = []
        for index, (event, funder) in enumerate(facts):
            booked = entry_for(
                event,
                payment,
                chain_id=target.chain_id,
                key=_key(history, generation, f"log{index}"),
                funder=funder,
            )
            if booked is not None:
                rebooked.append(booked)
            payment = apply(payment, event)
        if rebooked:
            ledger.record_all(conn, rebooked, now, state=EntryState.POSTED)


def _key(history: PaymentHistory, generation: int, suffix: str) -> str:
    return f"repair:{history.payment_id}:{generation}:{suffix}"


def _payment_logs(db: Database, target: ChainTarget, payment_hash: bytes) -> list[LogReceipt]:
    with db.snapshot() as conn:
        start_block = conn.execute(
            select(indexer_checkpoints.c.start_block).where(
                indexer_checkpoints.c.chain_id == target.chain_id,
                indexer_checkpoints.c.escrow_address == target.escrow,
            )
        ).scalar_one_or_none()
    log_filter: FilterParams = {
        "address": to_checksum_address(target.escrow),
        "fromBlock": start_block or 0,
        "toBlock": "latest",
        "topics": [list(map(_hex, chain.event_topics())), _hex(payment_hash)],
    }
    logs = target.w3.eth.get_logs(log_filter)
    return sorted(logs, key=lambda log: (log["blockNumber"], log["logIndex"]))


def _hex(value: bytes) -> str:
    return "0x" + value.hex()


def _chain_facts(
    logs: Sequence[LogReceipt], history: PaymentHistory, now: int
) -> list[tuple[Event, str | None]]:
    """The payment's escrow logs as domain events with their funders, in chain order. A
    capture's legs are the LegPaid logs its transaction emitted right after it. ``at`` is the
    repair's time: these events are booked, never stored."""
    raw: list[tuple[bytes, chain.EscrowEvent, list[Leg]]] = []
    for log in logs:
        decoded = chain.decode_event([bytes(t) for t in log["topics"]], bytes(log["data"]))
        tx = bytes(log["transactionHash"])
        if isinstance(decoded, chain.LegPaid):
            if not raw or raw[-1][0] != tx or not isinstance(raw[-1][1], chain.Captured):
                raise AssertionError("a LegPaid log without its capture before it")
            raw[-1][2].append(Leg(recipient=decoded.recipient, amount=decoded.amount))
        else:
            raw.append((tx, decoded, []))
    pid = history.payment_id
    facts: list[tuple[Event, str | None]] = []
    dispute_funder: str | None = None
    for _, decoded, legs in raw:
        match decoded:
            case chain.Authorized(amount=amount):
                facts.append((Authorized(payment_id=pid, at=now, amount=amount), None))
            case chain.Captured(amount=amount, fee=fee):
                event = Captured(payment_id=pid, at=now, amount=amount, fee=fee, legs=tuple(legs))
                facts.append((event, None))
            case chain.Voided(amount=amount):
                facts.append((Voided(payment_id=pid, at=now, amount=amount), None))
            case chain.Reclaimed(amount=amount):
                facts.append((Reclaimed(payment_id=pid, at=now, amount=amount), None))
            case chain.Refunded(amount=amount, funder=funder):
                facts.append((Refunded(payment_id=pid, at=now, amount=amount), funder))
            case chain.DisputeOpened(amount=amount, funder=funder):
                dispute_funder = funder
                facts.append((DisputeOpened(payment_id=pid, at=now, amount=amount), funder))
            case chain.DisputeResolved(payer_wins=payer_wins):
                winner = Party.PAYER if payer_wins else Party.MERCHANT
                resolved = DisputeResolved(payment_id=pid, at=now, winner=winner)
                facts.append((resolved, dispute_funder))
    return facts
