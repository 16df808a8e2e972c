"""Reconciliation (DESIGN §5.6): do the PSP, the ledger and the chain tell the same story?

Per payment, the escrow's ``payments(id)`` view (capturable, refundable) is compared with what
the ledger booked for that payment, and per asset the escrow's token balance with the ledger's
escrow accounts. The ledger side is read from the payment's non-voided postings (pending ones
count: the chain is read at its head, which already holds what awaits confirmation):

    capturable = net of escrow_held
    refundable = -(net of escrow_held + disputes + payer)

The second identity holds for every booking of ``ledger_events``: money the payer put in that
is neither held, frozen nor returned to the payer is captured money still refundable.

Nothing is read whole: payments are compared a page at a time (``PAYMENTS_PER_PAGE_MAX``, one
batch of view calls each), only the histories of payments that mismatch or may be resolved are
kept, and repair asks the node for a payment's logs in block ranges a public provider accepts
(``LOG_BLOCKS_PER_REQUEST_MAX``). The ledger's and the indexer's tables are read through
``engine.store.reconcile_queries``.

A mismatching payment gets one Conflicted event in its stream (the same discrepancy found again
adds none). ``repair`` re-syncs such a payment's books from the chain: every live entry of the
payment is reversed (posted) or voided (pending), newest first so no account dips below what
its flags allow, and the payment's escrow logs, read with eth_getLogs, are booked again through
``ledger_events`` in chain order, translated by ``engine.chain.facts`` as the mirror's are;
then everything is checked once more. The event store is not
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
from typing import Any, Final, cast

from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.providers.base import JSONBaseProvider
from web3.types import FilterParams, LogReceipt

from engine.chain import facts
from engine.chain.contracts import logs as chain
from engine.chain.contracts.escrow import ESCROW_NAME, bind, erc20
from engine.domain.events import REASON_LENGTH_MAX, Conflicted, Event
from engine.domain.payment import Payment, apply, decide_resolve_conflict, start
from engine.store import projections
from engine.store.db import Database
from engine.store.event_store import ConcurrencyConflict, EventStore
from engine.store.ledger import Ledger
from engine.store.ledger_accounts import AssetKey
from engine.store.ledger_entries import EntryState, NewEntry
from engine.store.ledger_events import entry_for
from engine.store.projections import stored_form
from engine.store.reconcile_queries import (
    PaymentBooks,
    escrow_holdings_projected,
    indexer_start_block,
    ledger_tokens,
    payment_books,
)
from engine.store.replay import PaymentHistory, payment_histories_page

# One JSON-RPC batch holds this many view calls; public providers refuse much larger ones.
CALLS_PER_BATCH_MAX: Final = 100
# Payments compared per page: their histories, books and escrow views are read together.
PAYMENTS_PER_PAGE_MAX: Final = 500
# Blocks one eth_getLogs call spans; public providers refuse wider ranges (often over 2,000).
LOG_BLOCKS_PER_REQUEST_MAX: Final = 2_000


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
class _Found:
    details: list[Mismatch] = field(default_factory=list)
    by_payment: dict[str, list[Mismatch]] = field(default_factory=dict)
    items: int = 0
    resolvable: list[str] = field(default_factory=list)  # conflicted, yet agreeing everywhere
    # The histories of the payments in ``by_payment`` and ``resolvable``: all that is acted on.
    histories: dict[str, PaymentHistory] = field(default_factory=dict)


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
    found = _compare(db, target, provider or {})
    conflicted = _mark_conflicted(db, found, now)
    repaired: list[str] = []
    if repair and found.details:
        for payment_id in sorted(found.by_payment):
            if any(m.source == "chain" for m in found.by_payment[payment_id]):
                _resync(db, target, found.histories[payment_id], now)
                repaired.append(payment_id)
        # Read afresh: the histories now hold the Conflicted events marked above.
        found = _compare(db, target, provider or {})
    resolved = _resolve(db, found, set(repaired), now)
    mismatched = len(found.by_payment) + len({m.asset for m in found.details if m.asset})
    return ReconcileReport(
        matched=found.items - mismatched,
        mismatched=mismatched,
        details=tuple(found.details),
        conflicted=tuple(conflicted),
        repaired=tuple(repaired),
        resolved=tuple(resolved),
    )


def _compare(db: Database, target: ChainTarget, provider: Mapping[str, ProviderView]) -> _Found:
    found = _Found()
    tokens: set[str] = set()
    after = ""
    while True:
        with db.snapshot() as conn:
            page = payment_histories_page(
                conn, EventStore(db), after=after, limit=PAYMENTS_PER_PAGE_MAX
            )
            books = payment_books(conn, page)
            posted_books = payment_books(conn, page, posted_only=True)
        if not page:
            break
        ordered = sorted(page)
        after = ordered[-1]
        tokens.update(history.requested.terms.token for history in page.values())
        hashes = [
            page[pid].requested.terms.payment_hash(target.chain_id, target.escrow)
            for pid in ordered
        ]
        views = _chain_views(target, hashes, [])
        for payment_id, view in zip(ordered, views, strict=True):
            _compare_payment(
                found,
                page[payment_id],
                (int(view[0]), int(view[1])),
                books.get(payment_id, PaymentBooks()),
                posted_books.get(payment_id, PaymentBooks()),
                provider.get(payment_id),
            )
        found.items += len(ordered)

    with db.snapshot() as conn:
        tokens |= ledger_tokens(conn, target.chain_id)
        assets = sorted(AssetKey(target.chain_id, token) for token in tokens)
        held_by_asset = {asset: escrow_holdings_projected(conn, asset) for asset in assets}
    balances = _chain_views(target, [], [asset.token for asset in assets])
    found.items += len(assets)
    for asset, balance in zip(assets, balances, strict=True):
        if held_by_asset[asset] != int(balance):
            _add(
                found,
                Mismatch("escrow_balance", held_by_asset[asset], int(balance), asset=str(asset)),
            )
    return found


def _compare_payment(
    found: _Found,
    history: PaymentHistory,
    view: tuple[int, int],
    booked: PaymentBooks,
    posted: PaymentBooks,
    expected: ProviderView | None,
) -> None:
    """Compare one payment's books with the escrow's view (capturable, refundable) and the
    PSP's, keeping its history if anything is to be done about it."""
    payment_id = history.payment_id
    capturable, refundable = view
    for name, ledger_value, chain_value in (
        ("capturable", booked.held, capturable),
        ("refundable", booked.refundable, refundable),
    ):
        if ledger_value != chain_value:
            _add(found, Mismatch(name, ledger_value, chain_value, payment=payment_id))
    if expected is not None:
        _compare_provider(found, history, expected)
    if payment_id in found.by_payment:
        found.histories[payment_id] = history
    elif history.last_conflict is not None and _recorded(history.projection(), posted):
        found.resolvable.append(payment_id)
        found.histories[payment_id] = history


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


def _recorded(payment: Payment, posted: PaymentBooks) -> bool:
    """Whether the payment's history tells what its posted books do: its events are the
    confirmed facts, and only confirmed facts are posted."""
    return payment.capturable == posted.held and payment.refundable == posted.refundable


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


def _mark_conflicted(db: Database, found: _Found, now: int) -> list[str]:
    """Append Conflicted to each mismatching payment, unless its newest Conflicted event already
    names this very discrepancy (a re-run must not pile up events)."""
    marked: list[str] = []
    for payment_id, mismatches in sorted(found.by_payment.items()):
        history = found.histories[payment_id]
        reason = _reason(mismatches)
        if history.last_conflict == reason:
            continue
        event = Conflicted(payment_id=payment_id, at=now, reason=reason)
        # The stream may have moved since the comparison read it (the mirror keeps booking);
        # the flag goes on top of whatever is there now.
        _append_flag(db, history, event, version=None)
        marked.append(payment_id)
    return marked


def _resolve(db: Database, found: _Found, repaired: set[str], now: int) -> list[str]:
    """Append ConflictResolved to each payment found agreeing again, returning it to its
    underlying status (the one its facts describe). Unlike a conflict, a resolution is judged
    on the stream as it was compared: if the stream moved since, the next run judges it
    afresh."""
    resolved: list[str] = []
    for payment_id in sorted(found.resolvable):
        history = found.histories[payment_id]
        payment = history.projection()
        if payment.underlying is None:
            raise AssertionError(f"{payment_id} is conflicted but never became so")
        how = "books re-synced from chain logs" if payment_id in repaired else "books"
        [event] = decide_resolve_conflict(
            payment, payment.underlying, f"reconcile: {how} match every view again", now
        )
        try:
            _append_flag(db, history, event, version=history.version)
        except ConcurrencyConflict:
            continue
        resolved.append(payment_id)
    return resolved


def _append_flag(
    db: Database, history: PaymentHistory, event: Event, *, version: int | None
) -> None:
    """Append a flag (Conflicted, ConflictResolved) to the payment's stream, expected at
    ``version`` (None: at whatever version it has now), and fold it into the projection, in one
    transaction."""
    store = EventStore(db)
    with db.transaction() as conn:
        if version is None:
            [version] = store.versions(conn, [history.stream_id]).values()
        store.append(conn, history.stream_id, version, [stored_form(event)])
        current = projections.load(conn, history.payment_id, lock=True)
        if current is not None:  # the projection moves with its stream
            projections.project(conn, current, [event], version + 1)


# ── repair ───────────────────────────────────────────────────────────────────────────────


def _resync(db: Database, target: ChainTarget, history: PaymentHistory, now: int) -> None:
    requested = history.requested
    payment_hash = requested.terms.payment_hash(target.chain_id, target.escrow)
    logs = [
        (bytes(log["transactionHash"]), _decoded(log))
        for log in _payment_logs(db, target, payment_hash)
    ]
    # ``at`` is the repair's time: these events are booked, never stored.
    events = facts.payment_events(
        logs, payment_id=history.payment_id, terms=requested.terms, at=now
    )
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
        for index, event in enumerate(events):
            booked = entry_for(
                event,
                payment,
                chain_id=target.chain_id,
                key=_key(history, generation, f"log{index}"),
            )
            if booked is not None:
                rebooked.append(booked)
            payment = apply(payment, event)
        if rebooked:
            ledger.record_all(conn, rebooked, now, state=EntryState.POSTED)


def _key(history: PaymentHistory, generation: int, suffix: str) -> str:
    return f"repair:{history.payment_id}:{generation}:{suffix}"


def _payment_logs(db: Database, target: ChainTarget, payment_hash: bytes) -> list[LogReceipt]:
    """The payment's escrow logs in chain order, from the block the indexer started at to the
    head, asked for ``LOG_BLOCKS_PER_REQUEST_MAX`` blocks at a time."""
    with db.snapshot() as conn:
        start_block = indexer_start_block(conn, target.chain_id, target.escrow) or 0
    head = target.w3.eth.block_number
    logs: list[LogReceipt] = []
    for first in range(start_block, head + 1, LOG_BLOCKS_PER_REQUEST_MAX):
        log_filter: FilterParams = {
            "address": to_checksum_address(target.escrow),
            "fromBlock": first,
            "toBlock": min(first + LOG_BLOCKS_PER_REQUEST_MAX - 1, head),
            "topics": [list(map(_hex, chain.event_topics())), _hex(payment_hash)],
        }
        logs.extend(target.w3.eth.get_logs(log_filter))
    return sorted(logs, key=lambda log: (log["blockNumber"], log["logIndex"]))


def _decoded(log: LogReceipt) -> chain.EscrowEvent:
    return chain.decode_event([bytes(topic) for topic in log["topics"]], bytes(log["data"]))


def _hex(value: bytes) -> str:
    return "0x" + value.hex()
