"""Identities: public ids with a type prefix, and the payment terms whose hash is the on-chain key.

A public id (``pay_…``) says what it names, so a merchant id pasted where a payment id belongs
fails at the edge instead of matching nothing. The on-chain key is different: the escrow stores
one slot per payment under the EIP-712 hash of its terms, so the same terms always map to the
same slot and a retried authorization cannot hold twice.
"""

import re
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from enum import StrEnum
from functools import lru_cache

from eth_utils import keccak

from engine.domain.errors import InvalidId, InvalidTerms
from engine.domain.money import (
    ZERO_ADDRESS,
    check_amount,
    check_bps,
    checksum_address,
)


class IdPrefix(StrEnum):
    PAYMENT = "pay"
    MERCHANT = "mer"
    EVENT = "evt"
    OPERATION = "op"
    COMMAND = "cmd"
    REFUND = "ref"
    DISPUTE = "dsp"
    API_KEY = "key"
    SETTLEMENT = "stl"
    REQUEST = "req"


ID_RANDOM_BYTES = 16
# Crockford's base32 in lower case: no i, l, o or u, so ids survive being read aloud or retyped.
_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"
_BODY_LENGTH = 26  # ceil(128 / 5); the first character therefore carries only 3 bits.
_ID = re.compile(rf"(?P<prefix>[a-z]+)_(?P<body>[0-7][{_ALPHABET}]{{{_BODY_LENGTH - 1}}})")


def new_id(prefix: IdPrefix, random_bytes: Callable[[int], bytes] = secrets.token_bytes) -> str:
    """A fresh public id; pass ``random_bytes`` (e.g. a seeded ``Random().randbytes``) in tests."""
    raw = random_bytes(ID_RANDOM_BYTES)
    if len(raw) != ID_RANDOM_BYTES:
        raise AssertionError(f"random source returned {len(raw)} bytes, not {ID_RANDOM_BYTES}")
    number = int.from_bytes(raw, "big")
    digits = []
    for _ in range(_BODY_LENGTH):
        number, digit = divmod(number, 32)
        digits.append(_ALPHABET[digit])
    return f"{prefix.value}_{''.join(reversed(digits))}"


def parse_id(value: object, expected: IdPrefix) -> str:
    """Return ``value`` if it is a well-formed public id of the ``expected`` kind."""
    if not isinstance(value, str):
        raise InvalidId(f"a {expected.value}_ id must be a string")
    match = _ID.fullmatch(value)
    if match is None:
        raise InvalidId(f"{value[:64]!r} is not a well-formed {expected.value}_ id")
    if match["prefix"] != expected.value:
        raise InvalidId(f"{value!r} is not a {expected.value}_ id")
    return value


UINT16_MAX = 2**16 - 1
UINT48_MAX = 2**48 - 1
UINT256_MAX = 2**256 - 1

# The Solidity struct in declaration order, which the hash depends on; PaymentTerms' fields are
# the same names in snake_case, in the same order.
TERMS_SOLIDITY_FIELDS = (
    ("payer", "address"),
    ("merchant", "address"),
    ("token", "address"),
    ("maxAmount", "uint120"),
    ("authorizationExpiry", "uint48"),
    ("refundExpiry", "uint48"),
    ("minFeeBps", "uint16"),
    ("maxFeeBps", "uint16"),
    ("feeReceiver", "address"),
    ("operator", "address"),
    ("salt", "uint256"),
)
TERMS_TYPE = "PaymentTerms(" + ",".join(f"{t} {n}" for n, t in TERMS_SOLIDITY_FIELDS) + ")"
TERMS_TYPEHASH = keccak(text=TERMS_TYPE)
DOMAIN_TYPE = "EIP712Domain(string name,string version,uint256 chainId,address verifyingContract)"
DOMAIN_TYPEHASH = keccak(text=DOMAIN_TYPE)
DOMAIN_NAME = "SettlementEscrow"
DOMAIN_VERSION = "1"


def _check_uint(value: object, field: str, maximum: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= maximum:
        raise InvalidTerms(f"{field} must be an integer between 0 and {maximum}")
    return value


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


def _address_word(address: str) -> bytes:
    return bytes(12) + bytes.fromhex(address[2:])


@lru_cache(maxsize=64)
def domain_separator(chain_id: int, escrow: str) -> bytes:
    """The EIP-712 domain hash of one escrow deployment; cached since a process uses few."""
    _check_uint(chain_id, "chain_id", UINT256_MAX)
    return keccak(
        DOMAIN_TYPEHASH
        + keccak(text=DOMAIN_NAME)
        + keccak(text=DOMAIN_VERSION)
        + _word(chain_id)
        + _address_word(checksum_address(escrow, "escrow"))
    )


@dataclass(frozen=True, slots=True)
class PaymentTerms:
    """The terms a payer agrees to, mirroring the escrow's ``PaymentTerms`` struct field by field.

    Validation here mirrors the contract's, so terms the engine accepts are terms the escrow
    accepts; addresses are kept in EIP-55 form.
    """

    payer: str
    merchant: str
    token: str
    max_amount: int
    authorization_expiry: int
    refund_expiry: int
    min_fee_bps: int
    max_fee_bps: int
    fee_receiver: str
    operator: str
    salt: int

    def __post_init__(self) -> None:
        for name in ("payer", "merchant", "token", "fee_receiver", "operator"):
            object.__setattr__(self, name, checksum_address(getattr(self, name), name))
        for name in ("payer", "merchant", "token", "operator"):
            if getattr(self, name) == ZERO_ADDRESS:
                raise InvalidTerms(f"{name} must not be the zero address")
        check_amount(self.max_amount, "max_amount", positive=True)
        _check_uint(self.authorization_expiry, "authorization_expiry", UINT48_MAX)
        _check_uint(self.refund_expiry, "refund_expiry", UINT48_MAX)
        if self.authorization_expiry > self.refund_expiry:
            raise InvalidTerms("authorization_expiry must not be after refund_expiry")
        check_bps(self.min_fee_bps, "min_fee_bps")
        check_bps(self.max_fee_bps, "max_fee_bps")
        if self.min_fee_bps > self.max_fee_bps:
            raise InvalidTerms("min_fee_bps must not exceed max_fee_bps")
        if self.fee_receiver == ZERO_ADDRESS and self.max_fee_bps != 0:
            raise InvalidTerms("a fee needs a fee_receiver; with none, max_fee_bps must be 0")
        _check_uint(self.salt, "salt", UINT256_MAX)

    def struct_hash(self) -> bytes:
        """``keccak256(abi.encode(TYPEHASH, terms))``; every field is static, so one word each."""
        values = (getattr(self, name) for name in _TERMS_FIELDS)
        return keccak(
            TERMS_TYPEHASH
            + b"".join(
                _address_word(value) if solidity_type == "address" else _word(value)
                for value, (_, solidity_type) in zip(values, TERMS_SOLIDITY_FIELDS, strict=True)
            )
        )

    def payment_hash(self, chain_id: int, escrow: str) -> bytes:
        """The 32-byte key of this payment in the escrow at ``escrow`` on ``chain_id``."""
        return keccak(b"\x19\x01" + domain_separator(chain_id, escrow) + self.struct_hash())

    def to_dict(self) -> dict[str, str | int]:
        return {name: getattr(self, name) for name in _TERMS_FIELDS}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> "PaymentTerms":
        if data.keys() != set(_TERMS_FIELDS):
            raise InvalidTerms(f"terms need exactly the fields {sorted(_TERMS_FIELDS)}")
        return cls(**data)  # type: ignore[arg-type]  # each field is checked in __post_init__


# The terms' field names in declaration order (the struct's), looked up once.
_TERMS_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(PaymentTerms))
