"""The ledger's accounts: which exist, what their balances mean, and which may not go negative.

Sign convention. A posting's amount is signed: positive credits the account, negative debits
it. An account's balance is credits minus debits, which reads as "what this account holds" for
the accounts inside the escrow (escrow_held, disputes, escrow_credits) and "what this party
received through the escrow" for the parties (a payer's balance is minus its net pay-in).

Balances. Each account keeps four running totals, all non-negative: debits and credits of its
pending entries, and of its posted entries (voided entries count nowhere).

* ``posted``    = credits_posted - debits_posted: what confirmed chain effects amount to.
* ``pending``   = credits_pending - debits_pending: what entries awaiting confirmation add.
* ``projected`` = posted + pending: the balance once every pending entry posts.
* ``available`` = posted - debits_pending: what the account can still give without counting
  on any pending credit (pending debits are already promised away, pending credits may yet
  be voided by a reorg).

Flags, which follow from an account's kind (``FLAGS``):

* ``NO_OVERDRAFT``: debits must not exceed credits, so neither ``posted`` nor ``projected``
  may go below zero. Money held in escrow and money paid out cannot be negative.
* ``NO_CREDIT_BALANCE``, its opposite: credits must not exceed debits, so neither may go above
  zero. A payer is never paid back more than it paid in.

``available`` is deliberately not bound by the flags: the chain mirror records a capture as
pending while the hold it draws on is still pending too, so ``available`` of escrow_held is
negative until the hold posts. The flags hold in every committed state instead: posting a debit
before the credit it counts on, or voiding a credit that a pending debit still counts on, is
refused. Posting in chain order (oldest first) and voiding a reorg's entries (together or
newest first) never is, since each leaves the books of a prefix of a solvent chain.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntFlag, StrEnum
from types import MappingProxyType
from typing import ClassVar

from engine.domain.errors import InvalidAddress
from engine.domain.money import checksum_address
from engine.store.event_store import StoreError
from engine.store.schema import LEDGER_ACCOUNT_FLAGS_LIMIT, LEDGER_ACCOUNT_KINDS


class InvalidLedgerInput(StoreError):
    """An asset, account or entry the ledger cannot hold as given."""

    code = "invalid_ledger_input"


class AccountKind(StrEnum):
    PAYER = "payer"  # the payer's wallet: debited by holds, credited by voids and refunds
    ESCROW_HELD = "escrow_held"  # open holds in the escrow (Σ capturable), pooled
    MERCHANT_SETTLED = "merchant_settled"  # the merchant's net from captures, less what it funded
    FEES = "fees"  # the fee receiver's fees
    LEG = "leg"  # a capture's extra leg recipient (ledger and reserve accounts)
    DISPUTES = "disputes"  # captured money frozen in the escrow by open disputes, pooled
    REFUNDS = "refunds"  # what a funder other than the merchant (the operator) put up
    ESCROW_CREDITS = "escrow_credits"  # payouts the escrow could not push, owed to their owner
    DEFERRED_PAYOUTS = "deferred_payouts"  # the other side of escrow_credits: not yet received


if tuple(AccountKind) != LEDGER_ACCOUNT_KINDS:
    raise AssertionError("AccountKind and schema.LEDGER_ACCOUNT_KINDS disagree")

# Accounts of the escrow as a whole rather than of one party; their owner is "".
POOLED_KINDS = frozenset({AccountKind.ESCROW_HELD, AccountKind.DISPUTES})
# The accounts whose money sits in the escrow contract; together they mirror its token balance.
ESCROW_KINDS = frozenset(
    {AccountKind.ESCROW_HELD, AccountKind.DISPUTES, AccountKind.ESCROW_CREDITS}
)


class AccountFlag(IntFlag):
    NO_OVERDRAFT = 1
    NO_CREDIT_BALANCE = 2


if sum(AccountFlag) >= LEDGER_ACCOUNT_FLAGS_LIMIT:
    raise AssertionError("AccountFlag outgrew schema.LEDGER_ACCOUNT_FLAGS_LIMIT")

_NONE = AccountFlag(0)
FLAGS = MappingProxyType(
    {
        AccountKind.PAYER: AccountFlag.NO_CREDIT_BALANCE,
        AccountKind.ESCROW_HELD: AccountFlag.NO_OVERDRAFT,
        # A merchant-funded refund of the gross amount takes back more than the net it was
        # paid (the fee and legs went elsewhere), so this one may go either way.
        AccountKind.MERCHANT_SETTLED: _NONE,
        AccountKind.FEES: AccountFlag.NO_OVERDRAFT,
        AccountKind.LEG: AccountFlag.NO_OVERDRAFT,
        AccountKind.DISPUTES: AccountFlag.NO_OVERDRAFT,
        AccountKind.REFUNDS: AccountFlag.NO_CREDIT_BALANCE,
        AccountKind.ESCROW_CREDITS: AccountFlag.NO_OVERDRAFT,
        AccountKind.DEFERRED_PAYOUTS: AccountFlag.NO_CREDIT_BALANCE,
    }
)
if set(FLAGS) != set(AccountKind):
    raise AssertionError("every account kind needs its flags")

_CHAIN_ID_LIMIT = 2**63  # the schema's BIGINT


@dataclass(frozen=True, slots=True, order=True)
class AssetKey:
    """A token on one chain: amounts of different assets never add up."""

    chain_id: int
    token: str  # EIP-55

    def __post_init__(self) -> None:
        if (
            not isinstance(self.chain_id, int)
            or isinstance(self.chain_id, bool)
            or not 0 < self.chain_id < _CHAIN_ID_LIMIT
        ):
            raise InvalidLedgerInput("chain_id must be a positive 63-bit integer")
        object.__setattr__(self, "token", _address(self.token, "token"))

    def __str__(self) -> str:
        return f"{self.chain_id}:{self.token}"


@dataclass(frozen=True, slots=True, order=True)
class AccountKey:
    """One account: an asset, a kind and, for party accounts, the party's address."""

    asset: AssetKey
    kind: AccountKind
    owner: str = ""  # EIP-55 address; "" for the pooled kinds

    def __post_init__(self) -> None:
        if not isinstance(self.asset, AssetKey):
            raise InvalidLedgerInput("asset must be an AssetKey")
        if not isinstance(self.kind, str) or self.kind not in set(AccountKind):
            raise InvalidLedgerInput(f"account kind must be one of {sorted(AccountKind)}")
        object.__setattr__(self, "kind", AccountKind(self.kind))
        if self.kind in POOLED_KINDS:
            if self.owner != "":
                raise InvalidLedgerInput(f"a {self.kind} account is pooled and has no owner")
        else:
            object.__setattr__(self, "owner", _address(self.owner, "owner"))

    @property
    def flags(self) -> AccountFlag:
        return FLAGS[self.kind]

    def __str__(self) -> str:
        return f"{self.asset}/{self.kind}" + (f"/{self.owner}" if self.owner else "")


def _address(value: object, field: str) -> str:
    try:
        return checksum_address(value, field)
    except InvalidAddress as error:
        raise InvalidLedgerInput(error.message) from error


@dataclass(frozen=True, slots=True)
class Balance:
    """An account's running totals (see the module docstring for what each derived value means)."""

    debits_pending: int = 0
    credits_pending: int = 0
    debits_posted: int = 0
    credits_posted: int = 0

    @property
    def totals(self) -> tuple[int, int, int, int]:
        return self.debits_pending, self.credits_pending, self.debits_posted, self.credits_posted

    @property
    def posted(self) -> int:
        return self.credits_posted - self.debits_posted

    @property
    def pending(self) -> int:
        return self.credits_pending - self.debits_pending

    @property
    def projected(self) -> int:
        return self.posted + self.pending

    @property
    def available(self) -> int:
        return self.posted - self.debits_pending

    def __add__(self, other: Balance) -> Balance:
        return Balance(
            self.debits_pending + other.debits_pending,
            self.credits_pending + other.credits_pending,
            self.debits_posted + other.debits_posted,
            self.credits_posted + other.credits_posted,
        )

    def check_totals(self, account: AccountKey) -> None:
        """Crash on a negative total: the ledger's own arithmetic broke, no caller can cause it."""
        if min(self.totals) < 0:
            raise AssertionError(f"negative running total on {account}: {self!r}")

    def check_flags(self, account: AccountKey) -> None:
        """Refuse a balance that the account's flags forbid, with a typed error."""
        if AccountFlag.NO_OVERDRAFT in account.flags and min(self.posted, self.projected) < 0:
            raise Overdraft(account, self)
        if AccountFlag.NO_CREDIT_BALANCE in account.flags and max(self.posted, self.projected) > 0:
            raise CreditBalance(account, self)


class AccountLimitExceeded(StoreError):
    """The change would break an account's flag; nothing of it was written."""

    code: ClassVar[str] = "account_limit_exceeded"

    def __init__(self, account: AccountKey, balance: Balance, rule: str) -> None:
        super().__init__(
            f"{account} would reach posted {balance.posted}, projected {balance.projected}: {rule}"
        )
        self.account = account
        self.balance = balance


class Overdraft(AccountLimitExceeded):
    code = "overdraft"

    def __init__(self, account: AccountKey, balance: Balance) -> None:
        super().__init__(account, balance, "its debits must not exceed its credits")


class CreditBalance(AccountLimitExceeded):
    code = "credit_balance"

    def __init__(self, account: AccountKey, balance: Balance) -> None:
        super().__init__(account, balance, "its credits must not exceed its debits")
