"""The double-entry ledger: balanced entries, idempotent keys, pending → posted | voided,
reversals, balances and the flags that keep money from going negative; then how each payment
event is booked."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import TypeVar

import pytest
from sqlalchemy import Connection, text, update

from engine.domain.events import (
    Authorized,
    Captured,
    Conflicted,
    ConflictResolved,
    DisputeOpened,
    DisputeResolved,
    Event,
    Failed,
    Party,
    PaymentRequested,
    Reclaimed,
    Refunded,
    Voided,
)
from engine.domain.ids import IdPrefix, PaymentTerms, new_id
from engine.domain.money import Leg
from engine.domain.payment import Payment, PaymentStatus, apply, decide_request, start
from engine.store import ledger as ledger_module
from engine.store.db import Database
from engine.store.event_store import EventStore, NewEvent
from engine.store.ledger import Ledger, scratch_tables
from engine.store.ledger_accounts import (
    AccountKey,
    AccountKind,
    AssetKey,
    Balance,
    CreditBalance,
    InvalidLedgerInput,
    Overdraft,
)
from engine.store.ledger_entries import (
    AlreadyReversed,
    EntryNotFound,
    EntryState,
    IdempotencyKeyReused,
    IllegalEntryTransition,
    NewEntry,
    Posting,
    Transfer,
    UnbalancedEntry,
)
from engine.store.ledger_events import credited, entry_for, transfers_for, withdrawn
from engine.store.schema import ledger_accounts, ledger_postings

CHAIN_ID = 31337
TOKEN = "0x" + "33" * 20
ASSET = AssetKey(CHAIN_ID, TOKEN)
OTHER_ASSET = AssetKey(CHAIN_ID, "0x" + "34" * 20)
PAYER = AccountKey(ASSET, AccountKind.PAYER, "0x" + "11" * 20)
MERCHANT = AccountKey(ASSET, AccountKind.MERCHANT_SETTLED, "0x" + "22" * 20)
HELD = AccountKey(ASSET, AccountKind.ESCROW_HELD)
DISPUTES = AccountKey(ASSET, AccountKind.DISPUTES)
T = 1_700_000_000
T_ = TypeVar("T_")


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


@pytest.fixture
def conn(database: Database) -> Iterator[Connection]:
    """One transaction for the whole test, as a caller's command would hold it."""
    with database.transaction() as connection:
        yield connection


def move(key: str, debit: AccountKey, credit: AccountKey, amount: int) -> NewEntry:
    return NewEntry.from_transfers(key, "test", [Transfer(debit, credit, amount)])


def hold(ledger: Ledger, conn: Connection, key: str, amount: int, *, posted: bool) -> None:
    state = EntryState.POSTED if posted else EntryState.PENDING
    ledger.record(conn, move(key, PAYER, HELD, amount), T, state=state)


def nothing_written(ledger: Ledger, conn: Connection) -> bool:
    return ledger.trial_balance(conn) == {} and ledger.verify(conn).entries == 0


# --- balanced entries ------------------------------------------------------------------------


def test_a_recorded_entry_is_pending_and_counts_only_in_pending_balances(
    ledger: Ledger, conn: Connection
) -> None:
    entry = ledger.record(conn, move("hold-1", PAYER, HELD, 100), T)

    assert entry.state is EntryState.PENDING
    assert entry.postings == (Posting(PAYER, -100), Posting(HELD, 100))
    assert (entry.created_at, entry.posted_at, entry.voided_at) == (T, None, None)
    held, payer = ledger.balance(conn, HELD), ledger.balance(conn, PAYER)
    assert (held.posted, held.pending, held.projected, held.available) == (0, 100, 100, 0)
    assert (payer.posted, payer.pending, payer.projected, payer.available) == (0, -100, -100, -100)


def test_an_unbalanced_entry_is_refused_and_nothing_is_written(
    ledger: Ledger, conn: Connection
) -> None:
    unbalanced = NewEntry("hold-1", "test", (Posting(PAYER, -100), Posting(HELD, 90)))

    with pytest.raises(UnbalancedEntry) as raised:
        ledger.record(conn, unbalanced, T)

    assert raised.value.code == "unbalanced_entry"
    assert raised.value.sums == {ASSET: -10}
    assert ledger.entry(conn, "hold-1") is None
    assert nothing_written(ledger, conn)


def test_postings_balance_per_asset_not_across_assets(ledger: Ledger, conn: Connection) -> None:
    other_held = AccountKey(OTHER_ASSET, AccountKind.ESCROW_HELD)
    across = NewEntry("swap-1", "test", (Posting(PAYER, -100), Posting(other_held, 100)))

    with pytest.raises(UnbalancedEntry) as raised:
        ledger.record(conn, across, T)

    assert raised.value.sums == {ASSET: -100, OTHER_ASSET: 100}
    assert nothing_written(ledger, conn)


def test_a_batch_with_one_refused_entry_writes_none_of_the_batch(
    ledger: Ledger, conn: Connection
) -> None:
    batch = [move("hold-1", PAYER, HELD, 100), move("void-1", HELD, PAYER, 150)]

    with pytest.raises(Overdraft):
        ledger.record_all(conn, batch, T)

    assert ledger.entry(conn, "hold-1") is None
    assert nothing_written(ledger, conn)


def test_an_entry_commits_or_rolls_back_with_the_event_that_caused_it(
    ledger: Ledger, database: Database
) -> None:
    events = EventStore(database)
    authorized = NewEvent("authorized", {"amount": 100}, T)

    with pytest.raises(RuntimeError), database.transaction() as conn:
        events.append(conn, "pay_1", 0, [authorized])
        ledger.record(conn, move("pay_1:1", PAYER, HELD, 100), T)
        raise RuntimeError("the worker died before committing")
    with database.transaction() as conn:
        assert events.read(conn, "pay_1") == [] and ledger.entry(conn, "pay_1:1") is None
        events.append(conn, "pay_1", 0, [authorized])
        ledger.record(conn, move("pay_1:1", PAYER, HELD, 100), T)

    with database.snapshot() as conn:
        assert len(events.read(conn, "pay_1")) == 1
        assert ledger.balance(conn, HELD).pending == 100


# --- idempotency ------------------------------------------------------------------------------


def test_recording_a_key_again_returns_the_first_entry_and_books_nothing_more(
    ledger: Ledger, conn: Connection
) -> None:
    first = ledger.record(conn, move("hold-1", PAYER, HELD, 100), T)
    ledger.post(conn, "hold-1", T + 1)

    again = ledger.record(conn, move("hold-1", PAYER, HELD, 100), T + 2)

    assert again.id == first.id
    assert again.state is EntryState.POSTED  # the first entry as it is now
    assert ledger.balance(conn, HELD) == Balance(credits_posted=100)


def test_reusing_a_key_for_different_postings_is_refused(ledger: Ledger, conn: Connection) -> None:
    ledger.record(conn, move("hold-1", PAYER, HELD, 100), T)

    with pytest.raises(IdempotencyKeyReused) as raised:
        ledger.record(conn, move("hold-1", PAYER, HELD, 101), T)

    assert raised.value.code == "idempotency_key_reused"
    assert ledger.balance(conn, HELD) == Balance(credits_pending=100)


def test_a_key_recorded_by_a_transaction_that_committed_first_is_answered_from_its_entry(
    ledger: Ledger, database: Database
) -> None:
    with database.transaction() as conn:
        first = ledger.record(conn, move("hold-1", PAYER, HELD, 100), T)
    with database.transaction() as conn:
        assert ledger.record(conn, move("hold-1", PAYER, HELD, 100), T).id == first.id


# --- pending → posted | voided ----------------------------------------------------------------


def test_posting_moves_an_entry_from_the_pending_to_the_posted_totals(
    ledger: Ledger, conn: Connection
) -> None:
    hold(ledger, conn, "hold-1", 100, posted=False)

    posted = ledger.post(conn, "hold-1", T + 12)

    assert (posted.state, posted.posted_at) == (EntryState.POSTED, T + 12)
    assert ledger.balance(conn, HELD) == Balance(credits_posted=100)
    assert ledger.balance(conn, PAYER) == Balance(debits_posted=100)


def test_voiding_a_pending_entry_takes_it_out_of_every_balance(
    ledger: Ledger, conn: Connection
) -> None:
    hold(ledger, conn, "hold-1", 100, posted=False)

    voided = ledger.void(conn, "hold-1", T + 3)

    assert (voided.state, voided.voided_at) == (EntryState.VOIDED, T + 3)
    assert ledger.balance(conn, HELD) == Balance()
    assert ledger.verify(conn).ok


def test_posting_or_voiding_again_is_a_no_op(ledger: Ledger, conn: Connection) -> None:
    hold(ledger, conn, "hold-1", 100, posted=False)
    hold(ledger, conn, "hold-2", 50, posted=False)
    ledger.post(conn, "hold-1", T + 1)
    ledger.void(conn, "hold-2", T + 1)

    assert ledger.post(conn, "hold-1", T + 2).posted_at == T + 1
    assert ledger.void(conn, "hold-2", T + 2).voided_at == T + 1
    assert ledger.balance(conn, HELD) == Balance(credits_posted=100)


@pytest.mark.parametrize(
    ("first", "then"),
    [("post", "void"), ("void", "post")],
    ids=["void-a-posted-entry", "post-a-voided-entry"],
)
def test_a_posted_entry_cannot_be_voided_nor_a_voided_one_posted(
    ledger: Ledger, conn: Connection, first: str, then: str
) -> None:
    hold(ledger, conn, "hold-1", 100, posted=False)
    getattr(ledger, first)(conn, "hold-1", T + 1)
    before = ledger.balance(conn, HELD)

    with pytest.raises(IllegalEntryTransition) as raised:
        getattr(ledger, then)(conn, "hold-1", T + 2)

    assert raised.value.code == "illegal_entry_transition"
    assert ledger.balance(conn, HELD) == before


def test_changing_an_unknown_entry_is_refused(ledger: Ledger, conn: Connection) -> None:
    with pytest.raises(EntryNotFound) as raised:
        ledger.post(conn, "nope", T)
    assert raised.value.code == "entry_not_found"


# --- reversals --------------------------------------------------------------------------------


def test_a_reversal_is_a_new_posted_entry_that_cancels_the_original(
    ledger: Ledger, conn: Connection
) -> None:
    hold(ledger, conn, "hold-1", 100, posted=True)

    reversal = ledger.reverse(conn, "hold-1", "reorg-hold-1", T + 5)

    original = ledger.entry(conn, "hold-1")
    assert original is not None and original.state is EntryState.POSTED
    assert reversal.reverses_id == original.id
    assert (reversal.kind, reversal.state) == ("reversal", EntryState.POSTED)
    assert reversal.postings == (Posting(PAYER, 100), Posting(HELD, -100))
    assert ledger.balance(conn, HELD) == Balance(debits_posted=100, credits_posted=100)


def test_an_entry_is_reversed_once(ledger: Ledger, conn: Connection) -> None:
    hold(ledger, conn, "hold-1", 100, posted=True)
    first = ledger.reverse(conn, "hold-1", "reorg-hold-1", T + 5)

    assert ledger.reverse(conn, "hold-1", "reorg-hold-1", T + 6).id == first.id
    with pytest.raises(AlreadyReversed) as raised:
        ledger.reverse(conn, "hold-1", "another-key", T + 6)
    assert raised.value.code == "already_reversed"
    assert ledger.balance(conn, HELD).posted == 0


def test_only_a_posted_entry_can_be_reversed(ledger: Ledger, conn: Connection) -> None:
    hold(ledger, conn, "hold-1", 100, posted=False)
    with pytest.raises(IllegalEntryTransition):
        ledger.reverse(conn, "hold-1", "reorg-hold-1", T)
    assert ledger.entry(conn, "reorg-hold-1") is None


def test_a_reversal_that_would_overdraw_an_account_is_refused(
    ledger: Ledger, conn: Connection
) -> None:
    hold(ledger, conn, "hold-1", 100, posted=True)
    ledger.record(conn, move("capture-1", HELD, MERCHANT, 100), T, state=EntryState.POSTED)

    # The hold's money is already captured: undo the capture first (newest first).
    with pytest.raises(Overdraft):
        ledger.reverse(conn, "hold-1", "reorg-hold-1", T)
    ledger.reverse(conn, "capture-1", "reorg-capture-1", T)
    ledger.reverse(conn, "hold-1", "reorg-hold-1", T)
    assert ledger.balance(conn, HELD).posted == 0


# --- balances and flags -----------------------------------------------------------------------


def test_an_overdraft_is_refused_with_its_code_and_nothing_half_written(
    ledger: Ledger, conn: Connection
) -> None:
    hold(ledger, conn, "hold-1", 100, posted=True)

    with pytest.raises(Overdraft) as raised:
        ledger.record(conn, move("capture-1", HELD, MERCHANT, 101), T)

    # The caller caught the error and its transaction goes on: the ledger left nothing in it.
    assert raised.value.code == "overdraft"
    assert raised.value.account == HELD
    assert ledger.entry(conn, "capture-1") is None
    assert ledger.balance(conn, MERCHANT) == Balance()
    assert ledger.balance(conn, HELD) == Balance(credits_posted=100)
    assert ledger.verify(conn).ok


def test_a_debit_may_count_on_a_pending_credit_but_not_post_before_it(
    ledger: Ledger, conn: Connection
) -> None:
    # The chain mirror sees a capture while the hold it draws on awaits confirmation too.
    hold(ledger, conn, "hold-1", 100, posted=False)
    ledger.record(conn, move("capture-1", HELD, MERCHANT, 60), T)
    held = ledger.balance(conn, HELD)
    assert (held.posted, held.projected, held.available) == (0, 40, -60)

    with pytest.raises(Overdraft):
        ledger.post(conn, "capture-1", T + 1)
    ledger.post_all(conn, ["hold-1", "capture-1"], T + 1)

    assert ledger.balance(conn, HELD) == Balance(debits_posted=60, credits_posted=100)


def test_a_credit_that_a_pending_debit_counts_on_is_voided_only_with_that_debit(
    ledger: Ledger, conn: Connection
) -> None:
    hold(ledger, conn, "hold-1", 100, posted=False)
    ledger.record(conn, move("capture-1", HELD, MERCHANT, 60), T)

    with pytest.raises(Overdraft):
        ledger.void(conn, "hold-1", T + 1)
    ledger.void_all(conn, ["hold-1", "capture-1"], T + 1)  # one reorg, in any order

    assert ledger.balance(conn, HELD) == Balance()


def test_a_payer_is_never_paid_back_more_than_it_paid_in(ledger: Ledger, conn: Connection) -> None:
    hold(ledger, conn, "hold-1", 100, posted=True)

    with pytest.raises(CreditBalance) as raised:
        ledger.record(conn, move("refund-1", MERCHANT, PAYER, 101), T)

    assert raised.value.code == "credit_balance"
    ledger.record(conn, move("refund-1", MERCHANT, PAYER, 100), T)
    assert ledger.balance(conn, PAYER).projected == 0


def test_the_trial_balance_of_every_asset_is_zero(ledger: Ledger, conn: Connection) -> None:
    other_payer = AccountKey(OTHER_ASSET, AccountKind.PAYER, PAYER.owner)
    other_held = AccountKey(OTHER_ASSET, AccountKind.ESCROW_HELD)
    hold(ledger, conn, "hold-1", 100, posted=True)
    hold(ledger, conn, "hold-2", 7, posted=False)
    ledger.record(conn, move("hold-3", other_payer, other_held, 5), T)

    trial = ledger.trial_balance(conn)

    assert set(trial) == {ASSET, OTHER_ASSET}
    assert all(total.posted == 0 and total.pending == 0 for total in trial.values())
    assert trial[ASSET] == Balance(7, 7, 100, 100)


def test_escrow_holdings_add_holds_disputes_and_unclaimed_credits(
    ledger: Ledger, conn: Connection
) -> None:
    fees = AccountKey(ASSET, AccountKind.FEES, "0x" + "44" * 20)
    hold(ledger, conn, "hold-1", 100, posted=True)
    posted = EntryState.POSTED
    ledger.record(conn, move("capture-1", HELD, fees, 30), T, state=posted)
    ledger.record(conn, move("dispute-1", MERCHANT, DISPUTES, 20), T, state=posted)
    unclaimed = NewEntry.from_transfers("credit-1", "credited", [credited(ASSET, fees.owner, 30)])
    ledger.record(conn, unclaimed, T, state=posted)

    assert ledger.escrow_holdings(conn, ASSET) == 70 + 20 + 30


def test_uint256_scale_amounts_are_kept_exactly(ledger: Ledger, conn: Connection) -> None:
    amount = 2**120 - 1  # the escrow's largest amount; far past a float's 53 bits
    for n in range(3):
        hold(ledger, conn, f"hold-{n}", amount, posted=True)
    assert ledger.balance(conn, HELD).posted == 3 * amount


# --- invariants read back ---------------------------------------------------------------------


def test_verify_finds_running_totals_that_disagree_with_the_postings(
    ledger: Ledger, conn: Connection
) -> None:
    hold(ledger, conn, "hold-1", 100, posted=True)
    assert ledger.verify(conn).ok
    conn.execute(
        update(ledger_accounts)
        .where(ledger_accounts.c.kind == "escrow_held")
        .values(credits_posted=150)
    )

    audit = ledger.verify(conn)

    assert not audit.ok
    assert any("escrow_held keeps" in problem for problem in audit.problems)


def test_reading_back_an_unbalanced_entry_crashes(ledger: Ledger, conn: Connection) -> None:
    hold(ledger, conn, "hold-1", 100, posted=True)
    conn.execute(update(ledger_postings).where(ledger_postings.c.amount == 100).values(amount=99))

    with pytest.raises(AssertionError, match="unbalanced"):
        ledger.entry(conn, "hold-1")
    assert any("sums to -1" in problem for problem in ledger.verify(conn).problems)


def test_verify_reads_a_page_at_a_time_and_finds_the_same_problems(
    ledger: Ledger, conn: Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        hold(ledger, conn, f"hold-{n}", 100 + n, posted=True)
    conn.execute(update(ledger_postings).where(ledger_postings.c.amount == 101).values(amount=99))
    whole = ledger.verify(conn)

    # One account and one posting per statement: an entry's postings span pages.
    monkeypatch.setattr(ledger_module, "ACCOUNTS_PER_PAGE_MAX", 1)
    monkeypatch.setattr(ledger_module, "POSTINGS_PER_PAGE_MAX", 1)
    paged = ledger.verify(conn)

    assert paged == whole
    assert (paged.entries, paged.accounts) == (3, 2)
    assert any("sums to -2" in problem for problem in paged.problems)


@pytest.mark.parametrize(
    "make",
    [
        lambda: Posting(HELD, 0),
        lambda: Posting(HELD, 1.0),  # type: ignore[arg-type]
        lambda: Transfer(HELD, HELD, 1),
        lambda: Transfer(PAYER, AccountKey(OTHER_ASSET, AccountKind.ESCROW_HELD), 1),
        lambda: AccountKey(ASSET, AccountKind.ESCROW_HELD, PAYER.owner),
        lambda: AccountKey(ASSET, AccountKind.PAYER, ""),
        lambda: NewEntry("k", "test", (Posting(HELD, 1),)),
        lambda: NewEntry("", "test", (Posting(HELD, 1), Posting(PAYER, -1))),
    ],
    ids=[
        "zero-posting",
        "float-amount",
        "transfer-to-itself",
        "transfer-across-assets",
        "pooled-account-with-owner",
        "party-account-without-owner",
        "single-posting",
        "empty-key",
    ],
)
def test_malformed_ledger_input_is_refused_with_its_code(make: Callable[[], object]) -> None:
    with pytest.raises(InvalidLedgerInput) as raised:
        make()
    assert raised.value.code == "invalid_ledger_input"


def test_scratch_tables_hold_a_ledger_of_their_own(ledger: Ledger, database: Database) -> None:
    scratch = scratch_tables("scratch_")
    with database.transaction() as conn:
        scratch.accounts.metadata.create_all(conn)
        hold(ledger, conn, "hold-1", 100, posted=True)
        Ledger(scratch).record(conn, move("hold-1", PAYER, HELD, 7), T, state=EntryState.POSTED)

        assert ledger.balance(conn, HELD).posted == 100
        assert Ledger(scratch).balance(conn, HELD).posted == 7
        scratch.accounts.metadata.drop_all(conn)


# --- concurrency (PostgreSQL: several workers on one database) --------------------------------


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_concurrent_entries_on_two_connections_lose_no_update(
    ledger: Ledger, database: Database
) -> None:
    rounds = 25
    start_together = threading.Barrier(2)
    failures: list[BaseException] = []

    def worker(name: str) -> None:
        payer = AccountKey(ASSET, AccountKind.PAYER, name)
        try:
            start_together.wait()
            for n in range(rounds):
                with database.transaction() as conn:
                    # Both open the same accounts on their first round.
                    ledger.record(conn, move(f"{name}-{n}", payer, HELD, 10), T)
                    ledger.post(conn, f"{name}-{n}", T)
        except BaseException as error:  # handed to the test thread below
            failures.append(error)

    threads = [threading.Thread(target=worker, args=("0x" + d * 40,)) for d in "ab"]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert failures == []
    with database.snapshot() as conn:
        assert ledger.balance(conn, HELD) == Balance(credits_posted=2 * rounds * 10)
        assert ledger.verify(conn).ok


def in_a_race(
    database: Database, first: Callable[[Connection], object], second: Callable[[Connection], T_]
) -> T_ | BaseException:
    """Run ``second`` in its own transaction while ``first``'s transaction, which ran first,
    holds its locks: ``first`` commits only once ``second`` waits for one of them."""
    outcome: list[T_ | BaseException] = []
    second_pid: list[int] = []

    def second_worker() -> None:
        try:
            with database.transaction() as conn:
                second_pid.append(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())
                result = second(conn)
            outcome.append(result)
        except BaseException as error:  # handed to the test thread below
            outcome.append(error)

    with database.transaction() as conn:
        first(conn)
        worker = threading.Thread(target=second_worker)
        worker.start()
        wait_until_blocked(database, second_pid)
    worker.join()
    [result] = outcome
    return result


def wait_until_blocked(database: Database, pid: list[int]) -> None:
    """Return once the backend in ``pid`` waits for a lock another transaction holds."""
    polls_max = 2_000
    with database.engine.connect() as watcher:
        for _ in range(polls_max):
            if pid:
                blockers = watcher.execute(
                    text("SELECT cardinality(pg_blocking_pids(:pid))"), {"pid": pid[0]}
                ).scalar_one()
                if blockers:
                    return
            watcher.rollback()
            threading.Event().wait(0.005)
    raise AssertionError("the second transaction never waited for the first one's lock")


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_debits_that_each_fit_but_not_both_never_both_pass(
    ledger: Ledger, database: Database
) -> None:
    with database.transaction() as conn:
        hold(ledger, conn, "hold-1", 160, posted=True)
        ledger.record(conn, move("capture-0", HELD, MERCHANT, 60), T, state=EntryState.POSTED)

    outcome = in_a_race(
        database,
        lambda conn: ledger.record(conn, move("capture-1", HELD, MERCHANT, 60), T),
        lambda conn: ledger.record(conn, move("capture-2", HELD, MERCHANT, 60), T),
    )

    assert isinstance(outcome, Overdraft)
    with database.snapshot() as conn:
        assert ledger.balance(conn, HELD).projected == 40
        assert ledger.entry(conn, "capture-2") is None


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_two_workers_recording_one_key_at_once_book_it_once(
    ledger: Ledger, database: Database
) -> None:
    entries = []
    outcome = in_a_race(
        database,
        lambda conn: entries.append(ledger.record(conn, move("hold-1", PAYER, HELD, 100), T)),
        lambda conn: ledger.record(conn, move("hold-1", PAYER, HELD, 100), T),
    )

    assert not isinstance(outcome, BaseException)
    assert outcome.id == entries[0].id
    with database.snapshot() as conn:
        assert ledger.balance(conn, HELD) == Balance(credits_pending=100)


# --- booking payment events -------------------------------------------------------------------

OPERATOR = "0x" + "55" * 20
FEE_RECEIVER = "0x" + "44" * 20
PARTNER = "0x" + "66" * 20
TERMS = PaymentTerms(
    payer=PAYER.owner,
    merchant=MERCHANT.owner,
    token=TOKEN,
    max_amount=10_000,
    authorization_expiry=2_000,
    refund_expiry=3_000,
    min_fee_bps=0,
    max_fee_bps=1_000,
    fee_receiver=FEE_RECEIVER,
    operator=OPERATOR,
    salt=7,
)
PAY = new_id(IdPrefix.PAYMENT, random.Random(4).randbytes)


def payment_after(*events: Event) -> Payment:
    [requested] = decide_request(PAY, TERMS, 1_000, 1_000)
    assert isinstance(requested, PaymentRequested)
    payment = start(requested)
    for event in events:
        payment = apply(payment, event)
    return payment


AUTHORIZED = Authorized(payment_id=PAY, at=1_000, amount=1_000)
CAPTURED = Captured(payment_id=PAY, at=1_000, amount=1_000, fee=50, legs=(Leg(PARTNER, 30),))
DISPUTE = DisputeOpened(payment_id=PAY, at=1_000, amount=400, funder=MERCHANT.owner)


def account(kind: AccountKind, owner: str = "") -> AccountKey:
    return AccountKey(ASSET, kind, owner)


def book(event: Event, before: Payment) -> set[Transfer]:
    return set(transfers_for(event, before, chain_id=CHAIN_ID))


def test_an_authorization_moves_the_amount_from_the_payer_into_escrow() -> None:
    assert book(AUTHORIZED, payment_after()) == {Transfer(PAYER, HELD, 1_000)}


def test_a_capture_pays_the_merchant_its_net_the_fee_receiver_and_every_leg() -> None:
    assert book(CAPTURED, payment_after(AUTHORIZED)) == {
        Transfer(HELD, MERCHANT, 920),
        Transfer(HELD, account(AccountKind.FEES, FEE_RECEIVER), 50),
        Transfer(HELD, account(AccountKind.LEG, PARTNER), 30),
    }


def test_a_capture_without_fee_books_no_empty_transfer() -> None:
    free = Captured(payment_id=PAY, at=1_000, amount=500, fee=0)
    assert book(free, payment_after(AUTHORIZED)) == {Transfer(HELD, MERCHANT, 500)}


@pytest.mark.parametrize("kind", [Voided, Reclaimed])
def test_a_void_or_reclaim_returns_the_hold_to_the_payer(kind: type[Voided | Reclaimed]) -> None:
    event = kind(payment_id=PAY, at=2_000, amount=1_000)
    assert book(event, payment_after(AUTHORIZED)) == {Transfer(HELD, PAYER, 1_000)}


@pytest.mark.parametrize(
    ("funder", "pays"),
    [(MERCHANT.owner, MERCHANT), (OPERATOR, account(AccountKind.REFUNDS, OPERATOR))],
    ids=["merchant-funded", "operator-funded"],
)
def test_a_refund_goes_from_its_funder_to_the_payer(funder: str, pays: AccountKey) -> None:
    refund = Refunded(payment_id=PAY, at=1_000, amount=300, funder=funder)
    before = payment_after(AUTHORIZED, CAPTURED)
    assert book(refund, before) == {Transfer(pays, PAYER, 300)}


@pytest.mark.parametrize(
    ("funder", "funded"),
    [(MERCHANT.owner, MERCHANT), (OPERATOR, account(AccountKind.REFUNDS, OPERATOR))],
    ids=["merchant-funded", "operator-funded"],
)
def test_a_dispute_freezes_the_funders_money_and_a_resolution_pays_whoever_the_chain_paid(
    funder: str, funded: AccountKey
) -> None:
    dispute = replace(DISPUTE, funder=funder)
    before = payment_after(AUTHORIZED, CAPTURED)
    assert book(dispute, before) == {Transfer(funded, DISPUTES, 400)}

    frozen = payment_after(AUTHORIZED, CAPTURED, dispute)
    payer_wins = DisputeResolved(payment_id=PAY, at=1_000, winner=Party.PAYER, paid_to=PAYER.owner)
    merchant_wins = DisputeResolved(payment_id=PAY, at=1_000, winner=Party.MERCHANT, paid_to=funder)
    assert book(payer_wins, frozen) == {Transfer(DISPUTES, PAYER, 400)}
    assert book(merchant_wins, frozen) == {Transfer(DISPUTES, funded, 400)}


def test_a_resolution_the_payer_won_paying_anyone_else_is_refused() -> None:
    frozen = payment_after(AUTHORIZED, CAPTURED, DISPUTE)
    wrong = DisputeResolved(payment_id=PAY, at=1_000, winner=Party.PAYER, paid_to=OPERATOR)
    with pytest.raises(InvalidLedgerInput, match="the payer won"):
        book(wrong, frozen)


def test_events_stored_before_they_named_their_accounts_book_the_merchants_money() -> None:
    """Until events named their funder and payee, the engine's commands had the merchant fund
    every refund and dispute, so an event without them books the merchant's account."""
    before = payment_after(AUTHORIZED, CAPTURED)
    refund = Refunded(payment_id=PAY, at=1_000, amount=300)
    dispute = DisputeOpened(payment_id=PAY, at=1_000, amount=400)
    merchant_wins = DisputeResolved(payment_id=PAY, at=1_000, winner=Party.MERCHANT)
    assert book(refund, before) == {Transfer(MERCHANT, PAYER, 300)}
    assert book(dispute, before) == {Transfer(MERCHANT, DISPUTES, 400)}
    assert book(merchant_wins, payment_after(AUTHORIZED, CAPTURED, dispute)) == {
        Transfer(DISPUTES, MERCHANT, 400)
    }


@pytest.mark.parametrize(
    "event",
    [
        Failed(payment_id=PAY, at=1_000, reason="permit reverted"),
        Conflicted(payment_id=PAY, at=1_000, reason="chain disagrees"),
        ConflictResolved(
            payment_id=PAY, at=1_000, status=PaymentStatus.REQUIRES_CAPTURE, reason="agree"
        ),
    ],
    ids=["failed", "conflicted", "conflict_resolved"],
)
def test_events_that_move_no_money_book_no_entry(event: Event) -> None:
    assert entry_for(event, payment_after(), chain_id=CHAIN_ID, key="k") is None


def test_an_unclaimed_payout_stays_in_escrow_until_withdrawn(
    ledger: Ledger, conn: Connection
) -> None:
    fees = account(AccountKind.FEES, FEE_RECEIVER)
    posted = EntryState.POSTED
    hold(ledger, conn, "hold-1", 100, posted=True)
    ledger.record(conn, move("capture-1", HELD, fees, 100), T, state=posted)
    ledger.record(
        conn,
        NewEntry.from_transfers("credit-1", "credited", [credited(ASSET, FEE_RECEIVER, 100)]),
        T,
        state=posted,
    )
    assert ledger.escrow_holdings(conn, ASSET) == 100

    ledger.record(
        conn,
        NewEntry.from_transfers("withdraw-1", "withdrawn", [withdrawn(ASSET, FEE_RECEIVER, 100)]),
        T,
        state=posted,
    )
    assert ledger.escrow_holdings(conn, ASSET) == 0
    assert ledger.balance(conn, fees).posted == 100


def test_a_payment_history_books_balanced_entries_that_leave_the_escrow_empty(
    ledger: Ledger, conn: Connection
) -> None:
    history: list[Event] = [
        AUTHORIZED,
        CAPTURED,
        replace(DISPUTE, funder=OPERATOR),
        DisputeResolved(payment_id=PAY, at=1_000, winner=Party.MERCHANT, paid_to=OPERATOR),
        Refunded(payment_id=PAY, at=1_000, amount=1_000, funder=MERCHANT.owner),
    ]
    payment = payment_after()
    for n, event in enumerate(history):
        entry = entry_for(event, payment, chain_id=CHAIN_ID, key=f"log-{n}")
        assert entry is not None and entry.payment_id == PAY
        ledger.record(conn, entry, T, state=EntryState.POSTED)
        payment = apply(payment, event)

    balances = ledger.balances(conn, ASSET)
    assert ledger.escrow_holdings(conn, ASSET) == 0
    assert balances[PAYER].posted == 0  # every unit came back
    assert balances[MERCHANT].posted == 920 - 1_000  # it funded the gross refund
    assert [entry.kind for entry in ledger.entries_of_payment(conn, PAY)] == [
        "authorized",
        "captured",
        "dispute_opened",
        "dispute_resolved",
        "refunded",
    ]
