"""Amounts, assets, fees and the accounts money moves between.

Amounts are ints of a token's minor units everywhere; a float never touches money, and decimal
strings exist only at the edges (API input, display). The fee rule here is the contract's rule
(``fee = ceil(amount * bps / 10_000)``): the engine predicts exactly what the chain will pay, and
a fee can never round down to zero by splitting a capture into small pieces.
"""

import re
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from eth_utils import to_checksum_address

from engine.domain.errors import InvalidAddress, InvalidAmount, InvalidAsset, InvalidFeeBps

BPS_DENOMINATOR = 10_000
# The escrow stores amounts as uint120; nothing larger can ever be held, so nothing larger is
# accepted anywhere in the domain.
AMOUNT_MAX = 2**120 - 1
# One whole unit must fit in an amount: 10**36 < 2**120 < 10**37.
DECIMALS_MAX = 36
SYMBOL_LENGTH_MAX = 16
# Bounds the legs of one capture; the escrow loops over them on chain, so they cost gas.
EXTRA_LEGS_MAX = 4  # the escrow's LEGS_MAX: it loops over them on chain
ZERO_ADDRESS = "0x" + "00" * 20

_ADDRESS = re.compile(r"0x[0-9a-fA-F]{40}")
_DECIMAL = re.compile(r"(?P<whole>[0-9]+)(?:\.(?P<fraction>[0-9]+))?")
# Longest text that can still be an amount: the digits of AMOUNT_MAX, a point, all decimals.
_DECIMAL_TEXT_LENGTH_MAX = len(str(AMOUNT_MAX)) + 1 + DECIMALS_MAX


def checksum_address(value: object, field: str) -> str:
    """Return the EIP-55 form of an address, so equal accounts compare equal as strings.

    Mixed-case input must already carry a correct checksum: a wrong one is a typo, and a typo
    in an address sends money to nobody.
    """
    if not isinstance(value, str) or not _ADDRESS.fullmatch(value):
        raise InvalidAddress(f"{field} must be a 0x-prefixed 20-byte hex address")
    checksummed = _eip55(value)
    digits = value[2:]
    if digits != digits.lower() and digits != digits.upper() and value != checksummed:
        raise InvalidAddress(f"{field} has a wrong EIP-55 checksum")
    return checksummed


@lru_cache(maxsize=4096)
def _eip55(value: str) -> str:
    """Remembered: EIP-55 hashes the address with keccak, and the same few parties' addresses
    are checked again for every payment, event and ledger posting."""
    return str(to_checksum_address(value))


def check_amount(value: object, field: str, *, positive: bool) -> int:
    """Return ``value`` if it is an int amount the escrow can hold (and above zero if asked)."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidAmount(f"{field} must be an integer of minor units")
    minimum = 1 if positive else 0
    if not minimum <= value <= AMOUNT_MAX:
        raise InvalidAmount(f"{field} must be between {minimum} and {AMOUNT_MAX}, got {value}")
    return value


def check_bps(value: object, field: str) -> int:
    """Return ``value`` if it is a basis-point rate between 0 and 100 %."""
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidFeeBps(f"{field} must be an integer of basis points")
    if not 0 <= value <= BPS_DENOMINATOR:
        raise InvalidFeeBps(f"{field} must be between 0 and {BPS_DENOMINATOR}, got {value}")
    return value


def fee_for(amount: int, bps: int) -> int:
    """The fee on ``amount`` at ``bps``, rounded up so any non-zero rate charges a unit."""
    check_amount(amount, "amount", positive=False)
    check_bps(bps, "fee_bps")
    return -(-amount * bps // BPS_DENOMINATOR)


@dataclass(frozen=True, slots=True)
class Asset:
    """A token as the engine knows it; ``token`` is None for the chain's native coin."""

    symbol: str
    token: str | None
    decimals: int

    def __post_init__(self) -> None:
        if (
            not isinstance(self.symbol, str)
            or not 1 <= len(self.symbol) <= SYMBOL_LENGTH_MAX
            or not self.symbol.isprintable()
            or any(c.isspace() for c in self.symbol)
        ):
            raise InvalidAsset(f"symbol must be 1 to {SYMBOL_LENGTH_MAX} visible characters")
        if not isinstance(self.decimals, int) or isinstance(self.decimals, bool):
            raise InvalidAsset("decimals must be an integer")
        if not 0 <= self.decimals <= DECIMALS_MAX:
            raise InvalidAsset(f"decimals must be between 0 and {DECIMALS_MAX}")
        if self.token is not None:
            object.__setattr__(self, "token", checksum_address(self.token, "token"))

    def parse_amount(self, text: object) -> int:
        """Minor units of a decimal string such as ``"12.34"``, exactly or not at all.

        Only plain digits with an optional fraction are accepted: no sign, exponent, spaces,
        NaN or infinity. The conversion is integer arithmetic rather than ``Decimal`` because
        ``Decimal``'s default 28-digit context would round amounts near ``AMOUNT_MAX``.
        """
        if not isinstance(text, str):
            raise InvalidAmount(
                f"amount must be a decimal string, not {type(text).__name__} "
                "(floats cannot represent money exactly)"
            )
        match = _DECIMAL.fullmatch(text) if len(text) <= _DECIMAL_TEXT_LENGTH_MAX else None
        if match is None:
            raise InvalidAmount(f"amount {text[:64]!r} is not a plain non-negative decimal")
        fraction = match["fraction"] or ""
        if len(fraction) > self.decimals:
            raise InvalidAmount(
                f"amount {text!r} has {len(fraction)} decimals; {self.symbol} has {self.decimals}"
            )
        scaled_fraction = int(fraction.ljust(self.decimals, "0") or "0")
        minor = int(match["whole"]) * 10**self.decimals + scaled_fraction
        return check_amount(minor, "amount", positive=False)

    def format_amount(self, minor: int) -> str:
        """The decimal string of ``minor`` units with all of the asset's decimals shown."""
        check_amount(minor, "amount", positive=False)
        if self.decimals == 0:
            return str(minor)
        whole, fraction = divmod(minor, 10**self.decimals)
        return f"{whole}.{fraction:0{self.decimals}d}"


@dataclass(frozen=True, slots=True)
class Leg:
    """Part of a capture paid to an account other than the merchant and the fee receiver."""

    recipient: str
    amount: int

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipient", checksum_address(self.recipient, "leg recipient"))
        check_amount(self.amount, "leg amount", positive=True)

    def to_dict(self) -> dict[str, str | int]:
        return {"recipient": self.recipient, "amount": self.amount}


@dataclass(frozen=True, slots=True)
class CaptureSplit:
    """How one capture divides: the merchant gets what the fee and the extra legs leave."""

    amount: int
    fee: int
    merchant_net: int
    extras: tuple[Leg, ...]

    def __post_init__(self) -> None:
        total = self.merchant_net + self.fee + sum(leg.amount for leg in self.extras)
        if total != self.amount or self.merchant_net < 0 or self.fee < 0:
            raise AssertionError(f"capture split does not add up: {self!r}")


def split_capture(amount: int, fee_bps: int, extra_legs: Sequence[Leg] = ()) -> CaptureSplit:
    """Divide a capture of ``amount`` between the fee, the extra legs and the merchant.

    The fee is taken on the gross amount, as the contract does; extra legs come out of the
    merchant's share and may not exceed it.
    """
    check_amount(amount, "capture amount", positive=True)
    if len(extra_legs) > EXTRA_LEGS_MAX:
        raise InvalidAmount(f"a capture has at most {EXTRA_LEGS_MAX} extra legs")
    fee = fee_for(amount, fee_bps)
    extras_total = sum(leg.amount for leg in extra_legs)
    merchant_net = amount - fee - extras_total
    if merchant_net < 0:
        raise InvalidAmount(
            f"extra legs ({extras_total}) and fee ({fee}) exceed the capture amount ({amount})"
        )
    return CaptureSplit(amount, fee, merchant_net, tuple(extra_legs))
