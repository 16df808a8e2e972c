"""Journal entries: a set of signed postings that must sum to zero per asset.

An entry is one fact (a hold, a capture, a reorg's reversal). It is recorded ``pending`` or
``posted``; a pending entry is later posted (its chain effect reached the confirmation depth) or
voided (a reorg removed it). A posted entry is never changed: a posted fact that turns out wrong
is undone by a reversal, a new entry with every posting negated that points back at it. Amounts
are never updated, so the postings are an append-only history whose sums are the balances.

Every entry carries an idempotency key chosen by the caller, such as the chain log's
``(block hash, tx hash, log index)`` or the id of the event that caused it. Recording a key
again returns the first entry. Keys are unique for good, voided entries included: a log that a
reorg removed and a later chain brings back is a new fact and needs a new key (the indexer
notice id that delivered it, say).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum

from engine.domain.errors import InvalidId
from engine.domain.ids import IdPrefix, parse_id
from engine.domain.money import AMOUNT_MAX
from engine.store.event_store import StoreError
from engine.store.ledger_accounts import AccountKey, AssetKey, InvalidLedgerInput
from engine.store.schema import LEDGER_ENTRY_KIND_LENGTH_MAX, LEDGER_KEY_LENGTH_MAX

# A capture touches escrow_held, the merchant, the fee receiver and at most four legs; the
# bound leaves room for hand-made adjustments and keeps one entry's lock set small.
POSTINGS_PER_ENTRY_MAX = 16
_TIME_LIMIT = 2**63  # the schema's BIGINT


class EntryState(StrEnum):
    PENDING = "pending"
    POSTED = "posted"
    VOIDED = "voided"


class UnbalancedEntry(StoreError):
    """The postings do not sum to zero for every asset; nothing was written."""

    code = "unbalanced_entry"

    def __init__(self, sums: dict[AssetKey, int]) -> None:
        shown = ", ".join(f"{asset}: {total}" for asset, total in sorted(sums.items()))
        super().__init__(f"postings must sum to zero per asset, got {shown}")
        self.sums = sums


class EntryNotFound(StoreError):
    code = "entry_not_found"

    def __init__(self, key: str) -> None:
        super().__init__(f"no ledger entry with key {key!r}")
        self.key = key


class IllegalEntryTransition(StoreError):
    """Only a pending entry can be posted or voided, and only a posted one reversed."""

    code = "illegal_entry_transition"

    def __init__(self, key: str, state: EntryState, action: str) -> None:
        hint = "; reverse it instead" if state is EntryState.POSTED and action == "void" else ""
        super().__init__(f"cannot {action} the {state} entry {key!r}{hint}")
        self.key = key
        self.state = state
        self.action = action


class IdempotencyKeyReused(StoreError):
    """The key already names an entry with different postings: a caller bug, never a retry."""

    code = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        super().__init__(f"ledger key {key!r} already names a different entry")
        self.key = key


class AlreadyReversed(StoreError):
    code = "already_reversed"

    def __init__(self, key: str, reversal_key: str) -> None:
        super().__init__(f"entry {key!r} was already reversed by {reversal_key!r}")
        self.key = key
        self.reversal_key = reversal_key


@dataclass(frozen=True, slots=True, order=True)
class Posting:
    """``amount`` credits ``account`` when positive and debits it when negative."""

    account: AccountKey
    amount: int

    def __post_init__(self) -> None:
        if not isinstance(self.account, AccountKey):
            raise InvalidLedgerInput("a posting's account must be an AccountKey")
        if (
            not isinstance(self.amount, int)
            or isinstance(self.amount, bool)
            or not 0 < abs(self.amount) <= AMOUNT_MAX
        ):
            raise InvalidLedgerInput(
                f"a posting's amount must be a non-zero integer up to {AMOUNT_MAX} in magnitude"
            )


@dataclass(frozen=True, slots=True)
class Transfer:
    """``amount`` moving from ``debit`` to ``credit``: the usual way to write two postings."""

    debit: AccountKey
    credit: AccountKey
    amount: int

    def __post_init__(self) -> None:
        if self.debit.asset != self.credit.asset:
            raise InvalidLedgerInput("a transfer moves one asset; write postings for an exchange")
        if self.debit == self.credit:
            raise InvalidLedgerInput(f"a transfer from {self.debit} to itself moves nothing")
        if (
            isinstance(self.amount, bool)
            or not isinstance(self.amount, int)
            or not 0 < self.amount <= AMOUNT_MAX
        ):
            raise InvalidLedgerInput(f"a transfer's amount must be an integer of 1 to {AMOUNT_MAX}")

    def postings(self) -> tuple[Posting, Posting]:
        return Posting(self.debit, -self.amount), Posting(self.credit, self.amount)


def _check_key(key: object, field: str) -> str:
    if not isinstance(key, str) or not 1 <= len(key) <= LEDGER_KEY_LENGTH_MAX:
        raise InvalidLedgerInput(f"{field} must be a string of 1 to {LEDGER_KEY_LENGTH_MAX} chars")
    return key


def check_time(value: object, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < _TIME_LIMIT:
        raise InvalidLedgerInput(f"{field} must be unix seconds")
    return value


@dataclass(frozen=True, slots=True)
class NewEntry:
    """An entry to record; ``Ledger.record`` checks that it balances before writing it."""

    key: str
    kind: str  # what caused it, e.g. the domain event's kind
    postings: tuple[Posting, ...]
    payment_id: str | None = None

    def __post_init__(self) -> None:
        _check_key(self.key, "key")
        if (
            not isinstance(self.kind, str)
            or not 1 <= len(self.kind) <= LEDGER_ENTRY_KIND_LENGTH_MAX
        ):
            raise InvalidLedgerInput(
                f"kind must be a string of 1 to {LEDGER_ENTRY_KIND_LENGTH_MAX} characters"
            )
        if self.payment_id is not None:
            try:
                parse_id(self.payment_id, IdPrefix.PAYMENT)
            except InvalidId as error:
                raise InvalidLedgerInput(error.message) from error
        if not isinstance(self.postings, tuple) or not all(
            isinstance(posting, Posting) for posting in self.postings
        ):
            raise InvalidLedgerInput("postings must be a tuple of Posting")
        if not 2 <= len(self.postings) <= POSTINGS_PER_ENTRY_MAX:
            raise InvalidLedgerInput(f"an entry has 2 to {POSTINGS_PER_ENTRY_MAX} postings")

    @classmethod
    def from_transfers(
        cls, key: str, kind: str, transfers: Iterable[Transfer], payment_id: str | None = None
    ) -> NewEntry:
        postings = tuple(posting for transfer in transfers for posting in transfer.postings())
        return cls(key, kind, postings, payment_id)

    def same_fact_as(self, entry: Entry) -> bool:
        """Whether ``entry`` is what recording this would have written (postings in any order)."""
        return (
            self.kind == entry.kind
            and self.payment_id == entry.payment_id
            and Counter(self.postings) == Counter(entry.postings)
        )


def imbalance(postings: Iterable[Posting]) -> dict[AssetKey, int]:
    """The assets whose postings do not sum to zero, with their sums."""
    sums: dict[AssetKey, int] = {}
    for posting in postings:
        asset = posting.account.asset
        sums[asset] = sums.get(asset, 0) + posting.amount
    return {asset: total for asset, total in sums.items() if total != 0}


@dataclass(frozen=True, slots=True)
class Entry:
    """A recorded entry as read back; reading an unbalanced one crashes, it means corruption."""

    id: int
    key: str
    kind: str
    payment_id: str | None
    state: EntryState
    postings: tuple[Posting, ...]
    reverses_id: int | None  # the entry this one reverses
    created_at: int
    posted_at: int | None
    voided_at: int | None

    def __post_init__(self) -> None:
        sums = imbalance(self.postings)
        if sums or len(self.postings) < 2:
            raise AssertionError(f"ledger entry {self.key!r} read back unbalanced: {sums}")
