"""The double-entry ledger (DESIGN §3, §5.2, §5.4): it mirrors the money the chain moved.

Accounts and their sign convention, balances and flags are explained in ``ledger_accounts``;
entries, their states and idempotency keys in ``ledger_entries``; which domain event books which
transfers in ``ledger_events``.

Every method works in the caller's SQL transaction, so an entry commits together with the
event or notice that caused it. Each call runs inside a savepoint: when it raises, nothing it
wrote stays in the caller's transaction, even if the caller catches the error and commits.

Balances are kept as running totals on the account rows rather than summed from postings on
every read: refusing an overdraft then costs one row read, not a scan of the account's
history, and escrow_held is touched by every payment. The postings stay the record: ``verify``
recomputes the totals from them. Concurrent writers on PostgreSQL serialise on the account rows
(SELECT … FOR UPDATE, always in id order so two entries over the same accounts cannot
deadlock), so no update is lost and no two debits both pass an overdraft check that only one
of them fits; SQLite lets one writer in at a time anyway.

Invariants are checked at both ends, as a broken one is a bug: an entry must balance per asset
before it is written (``UnbalancedEntry`` to the caller) and when it is read back
(``AssertionError``), and running totals never go negative.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, replace
from functools import lru_cache
from typing import Any, NamedTuple

from sqlalchemy import (
    ColumnElement,
    Connection,
    MetaData,
    Row,
    Table,
    and_,
    bindparam,
    insert,
    or_,
    select,
    true,
    update,
)
from sqlalchemy.exc import IntegrityError

from engine.store.db import insert_rows, one_of
from engine.store.ledger_accounts import (
    ESCROW_KINDS,
    AccountKey,
    AccountKind,
    AccountLimitExceeded,
    AssetKey,
    Balance,
    InvalidLedgerInput,
)
from engine.store.ledger_entries import (
    AlreadyReversed,
    Entry,
    EntryNotFound,
    EntryState,
    IdempotencyKeyReused,
    IllegalEntryTransition,
    NewEntry,
    Posting,
    UnbalancedEntry,
    check_time,
    imbalance,
)
from engine.store.schema import (
    NAMING_CONVENTION,
    define_ledger_tables,
    ledger_accounts,
    ledger_entries,
    ledger_postings,
)

# Bounds one call's work (and the rows it locks); a caller with more splits its batch.
ENTRIES_PER_CALL_MAX = 500
# Keeps a statement's bound parameters (four per account) well inside SQLite's limit.
_ACCOUNTS_PER_QUERY_MAX = 200
# What ``verify`` reads per statement: it walks every account and posting a page at a time.
ACCOUNTS_PER_PAGE_MAX = 1_000
POSTINGS_PER_PAGE_MAX = 5_000
REVERSAL_KIND = "reversal"


class LedgerTables(NamedTuple):
    accounts: Table
    entries: Table
    postings: Table


LIVE_TABLES = LedgerTables(ledger_accounts, ledger_entries, ledger_postings)


def scratch_tables(prefix: str) -> LedgerTables:
    """A second set of ledger tables, for replay to rebuild into and compare with the live one.

    They are defined in a MetaData of their own with the live naming convention; the caller
    creates them (``metadata.create_all``) and drops them.
    """
    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    return LedgerTables(*define_ledger_tables(metadata, prefix))


@dataclass(frozen=True, slots=True)
class LedgerAudit:
    """What ``verify`` found; ``problems`` lists each broken invariant in words."""

    accounts: int
    entries: int
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


class _Account(NamedTuple):
    id: int
    key: AccountKey
    balance: Balance


@lru_cache(maxsize=4_096)
def _account_key(chain_id: int, token: str, kind: str, owner: str) -> AccountKey:
    # Checksumming addresses costs a keccak each; account identities repeat on every read.
    return AccountKey(AssetKey(chain_id, token), AccountKind(kind), owner)


def _account(row: Row[Any]) -> _Account:
    key = _account_key(row.chain_id, row.token, row.kind, row.owner)
    if row.flags != key.flags:
        raise AssertionError(f"{key} carries flags {row.flags}, its kind {int(key.flags)}")
    return _Account(row.id, key, _balance(row))


def _balance(row: Row[Any]) -> Balance:
    return Balance(row.debits_pending, row.credits_pending, row.debits_posted, row.credits_posted)


def _moved(balance: Balance, amount: int, state: EntryState, sign: int) -> Balance:
    """``balance`` with a posting of ``amount`` added (sign 1) or taken out (sign -1) of the
    totals of ``state``."""
    debit, credit = (-amount, 0) if amount < 0 else (0, amount)
    if state is EntryState.PENDING:
        return replace(
            balance,
            debits_pending=balance.debits_pending + sign * debit,
            credits_pending=balance.credits_pending + sign * credit,
        )
    if state is EntryState.POSTED:
        return replace(
            balance,
            debits_posted=balance.debits_posted + sign * debit,
            credits_posted=balance.credits_posted + sign * credit,
        )
    return balance  # voided entries count nowhere


class Ledger:
    def __init__(self, tables: LedgerTables = LIVE_TABLES) -> None:
        self._t = tables

    # ── writing ──────────────────────────────────────────────────────────────────────────

    def record(
        self, conn: Connection, entry: NewEntry, at: int, *, state: EntryState = EntryState.PENDING
    ) -> Entry:
        """Record ``entry`` as pending (or posted, for a fact that needs no confirmation).

        A key recorded before returns the first entry unchanged, whatever its state now; the
        same key with different postings raises ``IdempotencyKeyReused``.
        """
        return self.record_all(conn, [entry], at, state=state)[0]

    def record_all(
        self,
        conn: Connection,
        entries: Sequence[NewEntry],
        at: int,
        *,
        state: EntryState = EntryState.PENDING,
    ) -> list[Entry]:
        """``record`` for a batch: all of it is written, or (on any error) none of it."""
        if state not in (EntryState.PENDING, EntryState.POSTED):
            raise InvalidLedgerInput("an entry is recorded pending or posted")
        return self._record(conn, [(entry, None) for entry in entries], at, state)

    def post(self, conn: Connection, key: str, at: int) -> Entry:
        """Post a pending entry: its chain effect reached the confirmation depth.

        Posting a posted entry again is a no-op; posting a voided one is illegal.
        """
        return self.post_all(conn, [key], at)[0]

    def post_all(self, conn: Connection, keys: Sequence[str], at: int) -> list[Entry]:
        """``post`` for a batch; flags are checked on the balances the whole batch leaves."""
        return self._transition(conn, keys, at, EntryState.POSTED)

    def void(self, conn: Connection, key: str, at: int) -> Entry:
        """Void a pending entry: a reorg removed the chain effect it recorded.

        Voiding a voided entry again is a no-op; a posted entry is reversed, not voided.
        """
        return self.void_all(conn, [key], at)[0]

    def void_all(self, conn: Connection, keys: Sequence[str], at: int) -> list[Entry]:
        """``void`` for a batch, e.g. every entry one reorg removed, in any order."""
        return self._transition(conn, keys, at, EntryState.VOIDED)

    def reverse(self, conn: Connection, key: str, reversal_key: str, at: int) -> Entry:
        """Undo the posted entry ``key`` with a new posted entry of the opposite postings.

        An entry is reversed once: reversing it again under the same ``reversal_key`` returns
        the reversal, under another key raises ``AlreadyReversed``.
        """
        with conn.begin_nested():
            original = self._entries(conn, self._t.entries.c.idempotency_key == key, lock=True)
            if not original:
                raise EntryNotFound(key)
            earlier = self._entries(conn, self._t.entries.c.reverses_entry_id == original[0].id)
            if earlier:
                if earlier[0].key != reversal_key:
                    raise AlreadyReversed(key, earlier[0].key)
                return earlier[0]
            if original[0].state is not EntryState.POSTED:
                raise IllegalEntryTransition(key, original[0].state, "reverse")
        negated = tuple(Posting(p.account, -p.amount) for p in original[0].postings)
        reversal = NewEntry(reversal_key, REVERSAL_KIND, negated, original[0].payment_id)
        return self._record(conn, [(reversal, original[0].id)], at, EntryState.POSTED)[0]

    # ── reading ──────────────────────────────────────────────────────────────────────────

    def entry(self, conn: Connection, key: str) -> Entry | None:
        found = self._entries(conn, self._t.entries.c.idempotency_key == key)
        return found[0] if found else None

    def entries_of_payment(self, conn: Connection, payment_id: str) -> list[Entry]:
        """A payment's entries in the order they were recorded."""
        return self._entries(conn, self._t.entries.c.payment_id == payment_id)

    def balance(self, conn: Connection, account: AccountKey) -> Balance:
        """The account's balance; an account nothing was ever posted to has a zero balance."""
        row = conn.execute(
            select(self._t.accounts).where(self._accounts_named(conn, [account]))
        ).one_or_none()
        return Balance() if row is None else _balance(row)

    def balances(self, conn: Connection, asset: AssetKey) -> dict[AccountKey, Balance]:
        return {account.key: account.balance for account in self._accounts(conn, asset)}

    def trial_balance(self, conn: Connection) -> dict[AssetKey, Balance]:
        """Every asset's accounts summed: ``posted`` and ``pending`` are 0 in a sound ledger,
        and ``credits_posted`` is the asset's posted turnover."""
        sums: dict[AssetKey, Balance] = {}
        for account in self._accounts(conn, None):
            asset = account.key.asset
            sums[asset] = sums.get(asset, Balance()) + account.balance
        return sums

    def escrow_holdings(self, conn: Connection, asset: AssetKey) -> int:
        """What the escrow's token balance should be by the posted ledger: open holds, frozen
        disputes and unclaimed credits."""
        balances = self.balances(conn, asset)
        return sum(
            balance.posted for account, balance in balances.items() if account.kind in ESCROW_KINDS
        )

    def verify(self, conn: Connection, asset: AssetKey | None = None) -> LedgerAudit:
        """Recompute every account's totals from the postings and check every invariant.

        With ``asset``, only that asset's accounts and postings: balance is per asset, so the
        check is complete for it. Reads every posting, a page at a time in entry order (so an
        entry's sum is checked as soon as its postings are read); run it in a snapshot, off
        the hot path. It holds one recomputed balance per account.
        """
        accounts = {account.id: account for account in self._accounts_paged(conn, asset)}
        recomputed = {account_id: Balance() for account_id in accounts}
        problems: list[str] = []
        entries = 0
        entry_sums: dict[AssetKey, int] = {}
        current_entry: int | None = None

        def close_entry() -> None:
            problems.extend(
                f"entry id {current_entry} sums to {total} in {asset_key}"
                for asset_key, total in entry_sums.items()
                if total != 0
            )

        for row in self._postings_paged(conn, asset):
            if row.entry_id != current_entry:
                close_entry()
                current_entry, entry_sums = row.entry_id, {}
                entries += 1
            account = accounts[row.account_id]
            state = EntryState(row.state)
            recomputed[row.account_id] = _moved(recomputed[row.account_id], row.amount, state, 1)
            entry_sums[account.key.asset] = entry_sums.get(account.key.asset, 0) + row.amount
        close_entry()
        for account_id, account in accounts.items():
            if recomputed[account_id] != account.balance:
                problems.append(
                    f"{account.key} keeps {account.balance}, its postings give "
                    f"{recomputed[account_id]}"
                )
            balance = account.balance
            if min(balance.totals) < 0:
                problems.append(f"{account.key} has a negative running total: {balance}")
            try:
                balance.check_flags(account.key)
            except AccountLimitExceeded as error:
                problems.append(str(error))
        return LedgerAudit(len(accounts), entries, tuple(problems))

    def _accounts_paged(self, conn: Connection, asset: AssetKey | None) -> Iterator[_Account]:
        a = self._t.accounts
        after = 0
        while page := conn.execute(
            select(a)
            .where(self._asset_clause(asset), a.c.id > after)
            .order_by(a.c.id)
            .limit(ACCOUNTS_PER_PAGE_MAX)
        ).all():
            yield from map(_account, page)
            after = page[-1].id

    def _postings_paged(self, conn: Connection, asset: AssetKey | None) -> Iterator[Any]:
        """Every posting (of ``asset``'s accounts) with its entry's state, by entry then
        posting id, read ``POSTINGS_PER_PAGE_MAX`` at a time."""
        a, e, p = self._t
        after = (0, 0)  # (entry id, posting id) of the last posting read
        while page := conn.execute(
            select(p.c.id, p.c.entry_id, p.c.account_id, p.c.amount, e.c.state)
            .join(e, e.c.id == p.c.entry_id)
            .join(a, a.c.id == p.c.account_id)
            .where(
                self._asset_clause(asset),
                or_(
                    p.c.entry_id > after[0],
                    and_(p.c.entry_id == after[0], p.c.id > after[1]),
                ),
            )
            .order_by(p.c.entry_id, p.c.id)
            .limit(POSTINGS_PER_PAGE_MAX)
        ).all():
            yield from page
            after = (page[-1].entry_id, page[-1].id)

    # ── internals ────────────────────────────────────────────────────────────────────────

    def _record(
        self,
        conn: Connection,
        entries: Sequence[tuple[NewEntry, int | None]],
        at: int,
        state: EntryState,
    ) -> list[Entry]:
        check_time(at, "at")
        if not 1 <= len(entries) <= ENTRIES_PER_CALL_MAX:
            raise InvalidLedgerInput(f"record 1 to {ENTRIES_PER_CALL_MAX} entries at a time")
        for entry, _ in entries:
            if not isinstance(entry, NewEntry):
                raise InvalidLedgerInput("entries must be NewEntry")
            sums = imbalance(entry.postings)
            if sums:
                raise UnbalancedEntry(sums)
        keys = [entry.key for entry, _ in entries]
        try:
            with conn.begin_nested():
                return self._write_new(conn, entries, at, state)
        except IntegrityError:
            # A concurrent transaction committed one of these keys between our look-up and
            # our insert; everything of ours was rolled back, so answer from what it wrote.
            known = self._known(conn, entries)
            if len(known) != len(set(keys)):
                raise
            return [known[key] for key in keys]

    def _write_new(
        self,
        conn: Connection,
        entries: Sequence[tuple[NewEntry, int | None]],
        at: int,
        state: EntryState,
    ) -> list[Entry]:
        known = self._known(conn, entries)
        fresh: dict[str, tuple[NewEntry, int | None]] = {}
        for entry, reverses_id in entries:
            if entry.key in known:
                continue
            if entry.key in fresh:
                if fresh[entry.key] != (entry, reverses_id):
                    raise IdempotencyKeyReused(entry.key)
                continue
            fresh[entry.key] = (entry, reverses_id)
        if fresh:
            accounts = self._lock_accounts(
                conn,
                {p.account for entry, _ in fresh.values() for p in entry.postings},
                create=True,
            )
            balances = {key: account.balance for key, account in accounts.items()}
            for entry, _ in fresh.values():
                for posting in entry.postings:
                    account = posting.account
                    balances[account] = _moved(balances[account], posting.amount, state, 1)
            self._check_and_store(conn, accounts, balances)
            known.update(self._insert_entries(conn, list(fresh.values()), accounts, at, state))
        return [known[entry.key] for entry, _ in entries]

    def _known(
        self, conn: Connection, entries: Sequence[tuple[NewEntry, int | None]]
    ) -> dict[str, Entry]:
        """The entries already recorded under the keys of ``entries``, checked to be the same
        facts (a reused key raises)."""
        keys = {entry.key for entry, _ in entries}
        found = {
            entry.key: entry
            for entry in self._entries(
                conn, one_of(conn, self._t.entries.c.idempotency_key, sorted(keys))
            )
        }
        for entry, reverses_id in entries:
            stored = found.get(entry.key)
            if stored is not None and not (
                entry.same_fact_as(stored) and stored.reverses_id == reverses_id
            ):
                raise IdempotencyKeyReused(entry.key)
        return found

    def _insert_entries(
        self,
        conn: Connection,
        entries: list[tuple[NewEntry, int | None]],
        accounts: dict[AccountKey, _Account],
        at: int,
        state: EntryState,
    ) -> dict[str, Entry]:
        """Write ``entries`` and return them as they now read back."""
        e, p = self._t.entries, self._t.postings
        rows = [
            {
                "idempotency_key": entry.key,
                "kind": entry.kind,
                "payment_id": entry.payment_id,
                "state": state.value,
                "reverses_entry_id": reverses_id,
                "created_at": at,
                "posted_at": at if state is EntryState.POSTED else None,
                "voided_at": None,
            }
            for entry, reverses_id in entries
        ]
        inserted = insert_rows(conn, e, rows, returning=e.c.id)
        ids = {
            row["idempotency_key"]: entry_id for row, entry_id in zip(rows, inserted, strict=True)
        }
        insert_rows(
            conn,
            p,
            [
                {
                    "entry_id": ids[entry.key],
                    "account_id": accounts[posting.account].id,
                    "amount": posting.amount,
                }
                for entry, _ in entries
                for posting in entry.postings
            ],
        )
        return {
            entry.key: Entry(
                id=ids[entry.key],
                key=entry.key,
                kind=entry.kind,
                payment_id=entry.payment_id,
                state=state,
                postings=entry.postings,
                reverses_id=reverses_id,
                created_at=at,
                posted_at=at if state is EntryState.POSTED else None,
                voided_at=None,
            )
            for entry, reverses_id in entries
        }

    def _transition(
        self, conn: Connection, keys: Sequence[str], at: int, target: EntryState
    ) -> list[Entry]:
        check_time(at, "at")
        if not 1 <= len(keys) <= ENTRIES_PER_CALL_MAX:
            raise InvalidLedgerInput(f"change 1 to {ENTRIES_PER_CALL_MAX} entries at a time")
        action = "post" if target is EntryState.POSTED else "void"
        e = self._t.entries
        named = one_of(conn, e.c.idempotency_key, sorted(set(keys)))
        with conn.begin_nested():
            found = {entry.key: entry for entry in self._entries(conn, named, lock=True)}
            changing: dict[str, Entry] = {}
            for key in keys:
                entry = found.get(key)
                if entry is None:
                    raise EntryNotFound(key)
                if entry.state is target:
                    continue  # a retry of a transition already made
                if entry.state is not EntryState.PENDING:
                    raise IllegalEntryTransition(key, entry.state, action)
                changing[key] = entry
            if not changing:
                return [found[key] for key in keys]
            accounts = self._lock_accounts(
                conn, {p.account for entry in changing.values() for p in entry.postings}
            )
            balances = {key: account.balance for key, account in accounts.items()}
            for entry in changing.values():
                for posting in entry.postings:
                    account = posting.account
                    moved = _moved(balances[account], posting.amount, EntryState.PENDING, -1)
                    balances[account] = _moved(moved, posting.amount, target, 1)
            self._check_and_store(conn, accounts, balances)
            stamp = {"posted_at": at} if target is EntryState.POSTED else {"voided_at": at}
            conn.execute(
                update(e)
                .where(one_of(conn, e.c.id, [entry.id for entry in changing.values()]))
                .values(state=target.value, **stamp)
            )
            after = {entry.key: entry for entry in self._entries(conn, named)}
            return [after[key] for key in keys]

    def _check_and_store(
        self,
        conn: Connection,
        accounts: dict[AccountKey, _Account],
        balances: dict[AccountKey, Balance],
    ) -> None:
        """Refuse balances the flags forbid, then write the changed ones."""
        changed = {
            key: balance for key, balance in balances.items() if balance != accounts[key].balance
        }
        for key, balance in sorted(changed.items()):
            balance.check_totals(key)
            balance.check_flags(key)
        if not changed:
            return
        a = self._t.accounts
        conn.execute(
            update(a)
            .where(a.c.id == bindparam("b_id"))
            .values(
                debits_pending=bindparam("b_debits_pending", type_=a.c.debits_pending.type),
                credits_pending=bindparam("b_credits_pending", type_=a.c.credits_pending.type),
                debits_posted=bindparam("b_debits_posted", type_=a.c.debits_posted.type),
                credits_posted=bindparam("b_credits_posted", type_=a.c.credits_posted.type),
            ),
            [
                {
                    "b_id": accounts[key].id,
                    "b_debits_pending": balance.debits_pending,
                    "b_credits_pending": balance.credits_pending,
                    "b_debits_posted": balance.debits_posted,
                    "b_credits_posted": balance.credits_posted,
                }
                for key, balance in changed.items()
            ],
        )

    def _lock_accounts(
        self, conn: Connection, keys: set[AccountKey], *, create: bool = False
    ) -> dict[AccountKey, _Account]:
        """The accounts of ``keys``, locked until the transaction ends, in id order.

        With ``create``, missing accounts are opened first, in key order, each in a savepoint:
        a concurrent transaction opening the same account makes the insert wait and then fail,
        after which the account is there to lock.
        """
        accounts = self._select_for_update(conn, keys)
        missing = keys - set(accounts)
        if missing and create:
            a = self._t.accounts
            for key in sorted(missing):
                try:
                    with conn.begin_nested():
                        conn.execute(insert(a).values(**_new_account_row(key)))
                except IntegrityError:
                    pass  # opened meanwhile by a concurrent transaction
            accounts = self._select_for_update(conn, keys)
            missing = keys - set(accounts)
        if missing:
            # Without create, the accounts are an entry's: they exist since it was recorded.
            raise AssertionError(f"ledger accounts missing: {sorted(map(str, missing))}")
        return accounts

    def _select_for_update(
        self, conn: Connection, keys: set[AccountKey]
    ) -> dict[AccountKey, _Account]:
        a = self._t.accounts
        if len(keys) <= _ACCOUNTS_PER_QUERY_MAX:
            named = self._accounts_named(conn, keys)
        else:
            # Look the ids up in bounded queries, then lock them all in one statement, so that
            # the locks are still taken in id order.
            ordered = sorted(keys)
            chunks = range(0, len(ordered), _ACCOUNTS_PER_QUERY_MAX)
            ids = [
                account_id
                for start in chunks
                for account_id in conn.execute(
                    select(a.c.id).where(
                        self._accounts_named(conn, ordered[start : start + _ACCOUNTS_PER_QUERY_MAX])
                    )
                ).scalars()
            ]
            named = one_of(conn, a.c.id, sorted(ids))
        rows = conn.execute(select(a).where(named).order_by(a.c.id).with_for_update())
        return {account.key: account for account in map(_account, rows)}

    def _accounts(self, conn: Connection, asset: AssetKey | None) -> list[_Account]:
        a = self._t.accounts
        rows = conn.execute(select(a).where(self._asset_clause(asset)).order_by(a.c.id))
        return [_account(row) for row in rows]

    def _entries(
        self, conn: Connection, where: ColumnElement[bool], *, lock: bool = False
    ) -> list[Entry]:
        a, e, p = self._t
        query = select(e).where(where).order_by(e.c.id)
        rows = list(conn.execute(query.with_for_update() if lock else query))
        if not rows:
            return []
        postings: dict[int, list[Posting]] = {row.id: [] for row in rows}
        for posting in conn.execute(
            select(p.c.entry_id, p.c.amount, a.c.chain_id, a.c.token, a.c.kind, a.c.owner)
            .join(a, a.c.id == p.c.account_id)
            .where(one_of(conn, p.c.entry_id, postings))
            .order_by(p.c.id)
        ):
            account = _account_key(posting.chain_id, posting.token, posting.kind, posting.owner)
            postings[posting.entry_id].append(Posting(account, posting.amount))
        return [
            Entry(
                id=row.id,
                key=row.idempotency_key,
                kind=row.kind,
                payment_id=row.payment_id,
                state=EntryState(row.state),
                postings=tuple(postings[row.id]),
                reverses_id=row.reverses_entry_id,
                created_at=row.created_at,
                posted_at=row.posted_at,
                voided_at=row.voided_at,
            )
            for row in rows
        ]

    def _accounts_named(self, conn: Connection, keys: Iterable[AccountKey]) -> ColumnElement[bool]:
        a = self._t.accounts
        return one_of(
            conn,
            (a.c.chain_id, a.c.token, a.c.kind, a.c.owner),
            [(key.asset.chain_id, key.asset.token, key.kind.value, key.owner) for key in keys],
        )

    def _asset_clause(self, asset: AssetKey | None) -> ColumnElement[bool]:
        a = self._t.accounts
        if asset is None:
            return true()
        return and_(a.c.chain_id == asset.chain_id, a.c.token == asset.token)


def _new_account_row(key: AccountKey) -> dict[str, object]:
    return {
        "chain_id": key.asset.chain_id,
        "token": key.asset.token,
        "kind": key.kind.value,
        "owner": key.owner,
        "flags": int(key.flags),
        "debits_pending": 0,
        "credits_pending": 0,
        "debits_posted": 0,
        "credits_posted": 0,
    }
