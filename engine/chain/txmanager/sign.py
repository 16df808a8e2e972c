"""Signing EIP-1559 transactions for a lane, without eth-account's per-call overhead.

eth-account's `sign_transaction` validates and re-formats the dict, derives the public key
and RLP-encodes through generic serializers on every call: about a millisecond, the biggest
cost of a pipelined send. This signs the same typed-transaction encoding (EIP-2718 type 2,
EIP-1559 fields, empty access list) with a key parsed once and a direct RLP encoding of the
few field kinds it needs; a test checks the bytes equal eth-account's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from eth_account.signers.local import LocalAccount
from eth_keys import keys
from eth_utils import keccak, to_checksum_address

from engine.store.transactions import Fees

EIP1559_TYPE: Final = b"\x02"
_EMPTY_ACCESS_LIST: Final = b"\xc0"


@dataclass(frozen=True)
class SignedTx:
    raw: bytes
    tx_hash: bytes


class LaneSigner:
    """Holds one lane's key; never logs or shows it (repr names the address only)."""

    def __init__(self, account: LocalAccount, chain_id: int) -> None:
        self.address = str(to_checksum_address(account.address))
        self._key = keys.PrivateKey(account.key)
        self._chain_id = chain_id
        assert self._key.public_key.to_checksum_address() == self.address

    def __repr__(self) -> str:
        return f"LaneSigner({self.address})"

    def sign(
        self, nonce: int, to: str, value: int, data: bytes, gas_limit: int, fees: Fees
    ) -> SignedTx:
        """`to` is a 0x-prefixed address (submit checked it); the caller stores the result."""
        to_bytes = bytes.fromhex(to[2:])
        assert len(to_bytes) == 20, to
        fields = b"".join(
            (
                _integer(self._chain_id),
                _integer(nonce),
                _integer(fees.max_priority_fee_per_gas),
                _integer(fees.max_fee_per_gas),
                _integer(gas_limit),
                _string(to_bytes),
                _integer(value),
                _string(data),
                _EMPTY_ACCESS_LIST,
            )
        )
        signature = self._key.sign_msg_hash(keccak(EIP1559_TYPE + _list(fields)))
        signed = fields + _integer(signature.v) + _integer(signature.r) + _integer(signature.s)
        raw = EIP1559_TYPE + _list(signed)
        return SignedTx(raw, keccak(raw))


# RLP (Ethereum yellow paper, appendix B) for the two kinds a transaction has: byte strings
# (integers are their minimal big-endian bytes) and one list of already-encoded items.


def _length_prefix(length: int, short_base: int) -> bytes:
    if length < 56:
        return bytes([short_base + length])
    length_bytes = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([short_base + 55 + len(length_bytes)]) + length_bytes


def _string(value: bytes) -> bytes:
    if len(value) == 1 and value[0] < 0x80:
        return value
    return _length_prefix(len(value), 0x80) + value


def _integer(value: int) -> bytes:
    assert value >= 0, value
    return _string(value.to_bytes((value.bit_length() + 7) // 8, "big"))


def _list(encoded_items: bytes) -> bytes:
    return _length_prefix(len(encoded_items), 0xC0) + encoded_items
