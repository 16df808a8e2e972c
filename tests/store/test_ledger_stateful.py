"""Random payment histories booked through the event mapping, confirmed, reorged and retried.

The model is the chain as the indexer reports it: a log of payment events in chain order whose
oldest entries are confirmed (posted) and whose newest may still be removed by a reorg (voided,
newest first). A reorg deeper than the confirmation depth removes a posted event, which the
ledger undoes with a reversal. After every step the ledger must be sound and agree with the
payments the model's events project to.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import ClassVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from engine.domain.errors import DomainError
from engine.domain.events import Authorized, DisputeOpened, Event, Party, PaymentRequested
from engine.domain.ids import IdPrefix, PaymentTerms, new_id
from engine.domain.money import Leg
from engine.domain.payment import (
    Payment,
    PaymentStatus,
    apply,
    decide_capture,
    decide_open_dispute,
    decide_reclaim,
    decide_refund,
    decide_request,
    decide_resolve_dispute,
    decide_void,
    start,
)
from engine.store.db import Database
from engine.store.ledger import Ledger
from engine.store.ledger_accounts import AccountFlag, AccountKey, AccountKind, AssetKey
from engine.store.ledger_entries import EntryState, IllegalEntryTransition, NewEntry
from engine.store.ledger_events import entry_for

TOKEN = "0x" + "33" * 20
PAYERS = ("0x" + "11" * 20, "0x" + "12" * 20)
MERCHANTS = ("0x" + "21" * 20, "0x" + "22" * 20)
PARTNERS = ("0x" + "66" * 20, "0x" + "67" * 20)
FEE_RECEIVER = "0x" + "44" * 20
OPERATOR = "0x" + "55" * 20
T0 = 1_000
AUTHORIZATION_EXPIRY = 2_000
PICK_MAX = 8  # the index rules draw to choose among the payments an action fits
AT = 1_700_000_000

# Every example books into an asset of its own (a fresh chain id), so examples share one
# migrated database without seeing each other's accounts.
_chain_ids = itertools.count(1)


def _unauthorized(payment: Payment) -> bool:
    return payment.status is PaymentStatus.PENDING


def _capturable(payment: Payment) -> bool:
    return payment.capturable > 0


def _refundable(payment: Payment) -> bool:
    return payment.refundable > 0


def _disputable(payment: Payment) -> bool:
    return payment.refundable > 0 and payment.capturable == 0


def _disputed(payment: Payment) -> bool:
    return payment.disputed > 0


@dataclass(frozen=True)
class Booked:
    """One money-moving chain event and the ledger entry that books it."""

    event: Event
    entry: NewEntry


class LedgerMachine(RuleBasedStateMachine):
    database: ClassVar[Database]  # set by the test, which gets it from a fixture

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger()
        self.chain_id = next(_chain_ids)
        self.asset = AssetKey(self.chain_id, TOKEN)
        self.requested: dict[str, PaymentRequested] = {}
        self.log: list[Booked] = []  # chain order: posted first, then pending
        self.posted = 0  # how many of the log's oldest entries are posted
        self.keys = itertools.count()

    # --- the model -------------------------------------------------------------------------

    def projection(self, payment_id: str, booked: list[Booked]) -> Payment:
        payment = start(self.requested[payment_id])
        for item in booked:
            if item.event.payment_id == payment_id:
                payment = apply(payment, item.event)
        return payment

    def payments(self, booked: list[Booked]) -> list[Payment]:
        return [self.projection(payment_id, booked) for payment_id in self.requested]

    def fitting(self, fits: Callable[[Payment], bool]) -> list[Payment]:
        return [payment for payment in self.payments(self.log) if fits(payment)]

    def pick(self, index: int, fits: Callable[[Payment], bool]) -> Payment:
        """One of the payments that ``fits`` the action; rules that need one have it as their
        precondition, so that few steps are wasted."""
        payments = self.fitting(fits)
        return payments[index % len(payments)]

    def book(self, events: list[Event]) -> None:
        [event] = events
        before = self.projection(event.payment_id, self.log)
        key = f"{self.chain_id}:{next(self.keys)}"
        entry = entry_for(event, before, chain_id=self.chain_id, key=key)
        assert entry is not None
        with self.database.transaction() as conn:
            recorded = self.ledger.record(conn, entry, AT)
        assert recorded.state is EntryState.PENDING
        self.log.append(Booked(event, entry))

    # --- chain events ------------------------------------------------------------------------

    @rule(
        payer=st.sampled_from(PAYERS),
        merchant=st.sampled_from(MERCHANTS),
        amount=st.integers(1, 10_000),
    )
    def authorize(self, payer: str, merchant: str, amount: int) -> None:
        """A new hold, or one that a reorg removed and the chain includes again."""
        again = self.fitting(_unauthorized)
        if again:
            self.book([Authorized(payment_id=again[0].id, at=T0, amount=again[0].amount)])
            return
        seed = self.chain_id * 1_000 + len(self.requested)
        payment_id = new_id(IdPrefix.PAYMENT, random.Random(seed).randbytes)
        terms = PaymentTerms(
            payer=payer,
            merchant=merchant,
            token=TOKEN,
            max_amount=10_000,
            authorization_expiry=AUTHORIZATION_EXPIRY,
            refund_expiry=3_000,
            min_fee_bps=0,
            max_fee_bps=500,
            fee_receiver=FEE_RECEIVER,
            operator=OPERATOR,
            salt=seed,
        )
        [requested] = decide_request(payment_id, terms, amount, T0)
        assert isinstance(requested, PaymentRequested)
        self.requested[payment_id] = requested
        self.book([Authorized(payment_id=payment_id, at=T0, amount=amount)])

    @precondition(lambda self: bool(self.fitting(_capturable)))
    @rule(
        index=st.integers(0, PICK_MAX - 1),
        percent=st.one_of(st.just(100), st.integers(1, 100)),
        fee_bps=st.integers(0, 500),
        legs=st.lists(st.tuples(st.sampled_from(PARTNERS), st.integers(1, 50)), max_size=2),
    )
    def capture(self, index: int, percent: int, fee_bps: int, legs: list[tuple[str, int]]) -> None:
        payment = self.pick(index, _capturable)
        amount = max(1, payment.capturable * percent // 100)
        try:
            events = decide_capture(
                payment, amount, T0, fee_bps=fee_bps, extra_legs=[Leg(r, a) for r, a in legs]
            )
        except DomainError:
            return
        self.book(events)

    @precondition(lambda self: bool(self.fitting(_capturable)))
    @rule(index=st.integers(0, PICK_MAX - 1), reclaim=st.booleans())
    def release(self, index: int, reclaim: bool) -> None:
        payment = self.pick(index, _capturable)
        try:
            if reclaim:
                events = decide_reclaim(payment, AUTHORIZATION_EXPIRY)
            else:
                events = decide_void(payment, T0)
        except DomainError:
            return
        self.book(events)

    @precondition(lambda self: bool(self.fitting(_refundable)))
    @rule(
        index=st.integers(0, PICK_MAX - 1),
        percent=st.integers(1, 100),
        merchant_funds=st.booleans(),
    )
    def refund(self, index: int, percent: int, merchant_funds: bool) -> None:
        payment = self.pick(index, _refundable)
        try:
            events = decide_refund(payment, max(1, payment.refundable * percent // 100), T0)
        except DomainError:
            return
        # The chain's log names the funder the escrow pulled from.
        funder = payment.terms.merchant if merchant_funds else OPERATOR
        self.book([replace(event, funder=funder) for event in events])

    @precondition(lambda self: bool(self.fitting(_disputable)))
    @rule(
        index=st.integers(0, PICK_MAX - 1),
        percent=st.integers(1, 100),
        merchant_funds=st.booleans(),
    )
    def open_dispute(self, index: int, percent: int, merchant_funds: bool) -> None:
        payment = self.pick(index, _disputable)
        try:
            events = decide_open_dispute(payment, max(1, payment.refundable * percent // 100), T0)
        except DomainError:
            return
        # The chain's log names the funder the escrow pulled from.
        funder = payment.terms.merchant if merchant_funds else OPERATOR
        self.book([replace(event, funder=funder) for event in events])

    @precondition(lambda self: bool(self.fitting(_disputed)))
    @rule(index=st.integers(0, PICK_MAX - 1), winner=st.sampled_from(Party))
    def resolve_dispute(self, index: int, winner: Party) -> None:
        payment = self.pick(index, _disputed)
        try:
            events = decide_resolve_dispute(payment, winner, T0)
        except DomainError:
            return
        # The resolution pays a won dispute back to whoever funded the freeze.
        [opened] = [
            item
            for item in self.log
            if item.event.payment_id == payment.id and isinstance(item.event, DisputeOpened)
        ][-1:]
        assert isinstance(opened.event, DisputeOpened)
        paid_to = payment.terms.payer if winner is Party.PAYER else opened.event.funder
        self.book([replace(event, paid_to=paid_to) for event in events])

    # --- confirmations, reorgs and retries ---------------------------------------------------

    @precondition(lambda self: self.posted < len(self.log))
    @rule(count=st.integers(1, 3))
    def confirm(self, count: int) -> None:
        """The oldest pending entries reach the confirmation depth."""
        confirmed = self.log[self.posted : self.posted + count]
        with self.database.transaction() as conn:
            entries = self.ledger.post_all(conn, [item.entry.key for item in confirmed], AT)
        assert all(entry.state is EntryState.POSTED for entry in entries)
        self.posted += len(confirmed)

    @precondition(lambda self: self.posted < len(self.log))
    @rule(count=st.integers(1, 2))
    def reorg(self, count: int) -> None:
        """A reorg removes the newest pending entries (one batch, in chain order)."""
        removed = self.log[max(self.posted, len(self.log) - count) :]
        with self.database.transaction() as conn:
            self.ledger.void_all(conn, [item.entry.key for item in removed], AT)
        del self.log[len(self.log) - len(removed) :]

    @precondition(lambda self: 0 < self.posted == len(self.log))
    @rule()
    def deep_reorg(self) -> None:
        """A reorg deeper than the confirmation depth removes the newest event, already posted."""
        newest = self.log.pop()
        self.posted -= 1
        with self.database.transaction() as conn:
            reversal = self.ledger.reverse(conn, newest.entry.key, f"{newest.entry.key}:reorg", AT)
        assert reversal.state is EntryState.POSTED

    @precondition(lambda self: bool(self.log))
    @rule(newest=st.booleans())
    def retry(self, newest: bool) -> None:
        """A redelivered notice records and transitions again; nothing changes."""
        item = self.log[-1] if newest else self.log[0]
        with self.database.transaction() as conn:
            before = self.ledger.balances(conn, self.asset)
            entry = self.ledger.record(conn, item.entry, AT)
            if entry.state is EntryState.POSTED:
                assert self.ledger.post(conn, item.entry.key, AT).id == entry.id
                with pytest.raises(IllegalEntryTransition):
                    self.ledger.void(conn, item.entry.key, AT)
            assert self.ledger.balances(conn, self.asset) == before

    # --- invariants ----------------------------------------------------------------------------

    @invariant()
    def books_agree_with_the_chain(self) -> None:
        with self.database.snapshot() as conn:
            audit = self.ledger.verify(conn, self.asset)
            trial = self.ledger.trial_balance(conn).get(self.asset)
            balances = self.ledger.balances(conn, self.asset)
        assert audit.ok, audit.problems
        if trial is not None:
            assert (trial.posted, trial.pending) == (0, 0)
        for account, balance in balances.items():
            if AccountFlag.NO_OVERDRAFT in account.flags:
                assert balance.posted >= 0 and balance.projected >= 0, (account, balance)
            if AccountFlag.NO_CREDIT_BALANCE in account.flags:
                assert balance.posted <= 0 and balance.projected <= 0, (account, balance)

        confirmed, seen = self.payments(self.log[: self.posted]), self.payments(self.log)
        held = balances.get(AccountKey(self.asset, AccountKind.ESCROW_HELD))
        disputes = balances.get(AccountKey(self.asset, AccountKind.DISPUTES))
        assert (held.posted if held else 0) == sum(p.capturable for p in confirmed)
        assert (held.projected if held else 0) == sum(p.capturable for p in seen)
        assert (disputes.projected if disputes else 0) == sum(p.disputed for p in seen)
        for payer in PAYERS:
            wallet = balances.get(AccountKey(self.asset, AccountKind.PAYER, payer))
            paid_in = sum(
                p.authorized - p.voided - p.reclaimed - p.refunded
                for p in seen
                if p.terms.payer == payer
            )
            assert (wallet.projected if wallet else 0) == -paid_in


def test_random_payment_histories_keep_the_books_balanced(database: Database) -> None:
    class OnThisDatabase(LedgerMachine):
        pass

    OnThisDatabase.database = database
    run_state_machine_as_test(
        OnThisDatabase, settings=settings(max_examples=25, stateful_step_count=30, deadline=None)
    )
