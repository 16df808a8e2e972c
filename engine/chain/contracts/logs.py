"""The escrow's payment events as typed values, decoded from raw logs with the checked-in ABI.

The indexer stores logs as the chain gave them (topics and data) and decodes them here when it
hands them on, so a stored log can always be re-read exactly. Each class mirrors one Solidity
event field by field (names in snake_case, same order); the first decode checks the classes
against the ABI and fails loudly if the contract's events changed without this module.

Only the payment events are here. The escrow also emits OpenZeppelin's role and pause events;
they move no money and the indexer does not ask the node for them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from functools import cache, lru_cache
from typing import Any, ClassVar, Final, TypeAlias

from eth_abi import decode
from eth_utils import keccak, to_checksum_address

from engine.chain.contracts.compiler import load_artifact
from engine.chain.contracts.escrow import ESCROW_NAME, Method
from engine.chain.contracts.reverts import ContractReverted, decode_revert
from engine.chain.errors import ChainError
from engine.domain.ids import PaymentTerms

TOPIC_BYTES: Final = 32
# Logs one process keeps decoded: a few polls' worth.
_DECODED_CACHE_SIZE: Final = 8_192
# The internal types the ABI gives the escrow's struct and enum; each decodes to our own type.
_TERMS_TYPE: Final = "struct SettlementEscrow.PaymentTerms"
_METHOD_TYPE: Final = "enum SettlementEscrow.Method"


class UnknownEscrowEvent(ChainError):
    """A log whose first topic is none of the escrow's payment events."""

    code: ClassVar[str] = "unknown_escrow_event"


class MalformedEscrowLog(ChainError):
    """A log with a known event topic whose topics or data do not decode as that event."""

    code: ClassVar[str] = "malformed_escrow_log"


@dataclass(frozen=True, slots=True)
class Authorized:
    payment_id: bytes
    terms: PaymentTerms
    amount: int
    method: Method


@dataclass(frozen=True, slots=True)
class Captured:
    payment_id: bytes
    seq: int
    amount: int
    fee: int


@dataclass(frozen=True, slots=True)
class LegPaid:
    payment_id: bytes
    recipient: str
    amount: int


@dataclass(frozen=True, slots=True)
class Voided:
    payment_id: bytes
    seq: int
    amount: int


@dataclass(frozen=True, slots=True)
class Reclaimed:
    payment_id: bytes
    seq: int
    amount: int


@dataclass(frozen=True, slots=True)
class Refunded:
    payment_id: bytes
    seq: int
    amount: int
    funder: str


@dataclass(frozen=True, slots=True)
class DisputeOpened:
    payment_id: bytes
    seq: int
    amount: int
    funder: str


@dataclass(frozen=True, slots=True)
class DisputeResolved:
    payment_id: bytes
    seq: int
    amount: int
    payer_wins: bool


@dataclass(frozen=True, slots=True)
class OperationFailed:
    """A non-atomic batch skipped operation `index`; `reason` is its raw revert data."""

    payment_id: bytes
    index: int
    reason: bytes

    @property
    def error(self) -> ContractReverted:
        """The revert by name and arguments; kept out of the fields so that equality and
        storage rest on the exact bytes the chain emitted."""
        return decode_revert(self.reason)


@dataclass(frozen=True, slots=True)
class Credited:
    token: str
    account: str
    amount: int


@dataclass(frozen=True, slots=True)
class Withdrawn:
    token: str
    account: str
    to: str
    amount: int


@dataclass(frozen=True, slots=True)
class FundingApproved:
    """The merchant let `spender` pull up to `cap` of its funds for refunds and disputes (0:
    none; 2**256 - 1: not counted down)."""

    merchant: str
    spender: str
    cap: int


EscrowEvent: TypeAlias = (
    Authorized
    | Captured
    | LegPaid
    | Voided
    | Reclaimed
    | Refunded
    | DisputeOpened
    | DisputeResolved
    | OperationFailed
    | Credited
    | Withdrawn
    | FundingApproved
)

EVENT_CLASSES: Final[tuple[type[EscrowEvent], ...]] = (
    Authorized,
    Captured,
    LegPaid,
    Voided,
    Reclaimed,
    Refunded,
    DisputeOpened,
    DisputeResolved,
    OperationFailed,
    Credited,
    Withdrawn,
    FundingApproved,
)


@dataclass(frozen=True)
class _Layout:
    """How one event's values are spread over topics and data, and how each becomes ours."""

    cls: type[EscrowEvent]
    indexed_types: tuple[str, ...]
    data_types: tuple[str, ...]
    # Field name, whether it is indexed, and its converter; in declaration order.
    inputs: tuple[tuple[str, bool, Callable[[Any], Any]], ...]


def event_topics() -> tuple[bytes, ...]:
    """The first topic of every payment event: the filter the indexer asks the node for."""
    return tuple(_layouts())


def event_name(event: EscrowEvent) -> str:
    """The Solidity name of the event, which is also its class name."""
    return type(event).__name__


def decode_event(topics: Sequence[bytes], data: bytes) -> EscrowEvent:
    """The typed event of one escrow log, from its raw topics and data.

    The indexer decodes a log when it stores it and again when it hands it out, mostly within
    one poll; the events are immutable, so the second decode is answered from a cache."""
    return _decode_event(tuple(bytes(topic) for topic in topics), bytes(data))


@lru_cache(maxsize=_DECODED_CACHE_SIZE)
def _decode_event(topics: tuple[bytes, ...], data: bytes) -> EscrowEvent:
    if not topics:
        raise UnknownEscrowEvent("a log without topics is no escrow payment event")
    layout = _layouts().get(bytes(topics[0]))
    if layout is None:
        raise UnknownEscrowEvent(f"no escrow payment event has topic 0x{bytes(topics[0]).hex()}")
    name = layout.cls.__name__
    indexed = topics[1:]
    if len(indexed) != len(layout.indexed_types) or any(
        len(topic) != TOPIC_BYTES for topic in indexed
    ):
        raise MalformedEscrowLog(f"{name} needs {len(layout.indexed_types)} indexed topics")
    try:
        indexed_values = iter(
            decode([kind], bytes(topic))[0]
            for kind, topic in zip(layout.indexed_types, indexed, strict=True)
        )
        static = _decode_static(layout.data_types, data)
        data_values = iter(decode(list(layout.data_types), data) if static is None else static)
        values = {
            field: convert(next(indexed_values) if is_indexed else next(data_values))
            for field, is_indexed, convert in layout.inputs
        }
    except Exception as error:  # eth_abi's decoding errors, or terms the domain rejects
        raise MalformedEscrowLog(f"{name} does not decode: {error}") from error
    return layout.cls(**values)


def _decode_static(types: Sequence[str], data: bytes) -> list[Any] | None:
    """``eth_abi.decode(types, data)`` for types of fixed size (all but one escrow event's),
    read straight from the 32-byte words, as the tuple of them is. None when a type is dynamic
    or the data is not exactly a canonical encoding, for eth_abi to decode (or refuse)."""
    if not types:
        return [] if not data else None
    reader = _word_reader(f"({','.join(types)})")
    if reader is None or len(data) != 32 * reader[0]:
        return None
    values = reader[1](data, 0)
    return None if values is _NOT_CANONICAL else list(values)


_NOT_CANONICAL: Final = object()
_WordReader: TypeAlias = tuple[int, Callable[[bytes, int], Any]]


@cache
def _word_reader(kind: str) -> _WordReader | None:
    """How many words a fixed-size ABI type takes and how to read it, or None if dynamic."""
    if kind.startswith("(") and kind.endswith(")"):
        parts = [_word_reader(part) for part in _split_tuple(kind[1:-1])]
        if any(part is None for part in parts):
            return None
        readers = [part for part in parts if part is not None]

        def read_tuple(data: bytes, at: int) -> Any:
            values = []
            for count, read in readers:
                value = read(data, at)
                if value is _NOT_CANONICAL:
                    return _NOT_CANONICAL
                values.append(value)
                at += 32 * count
            return tuple(values)

        return sum(count for count, _ in readers), read_tuple
    if kind == "address":
        return 1, _read_address
    if kind == "bool":
        return 1, _read_bool
    if kind == "bytes32":
        return 1, lambda data, at: data[at : at + 32]
    if re.fullmatch(r"uint(8|16|24|32|40|48|56|64|72|80|88|96|104|112|120|128|256)", kind):
        limit = 1 << int(kind[4:])

        def read_uint(data: bytes, at: int) -> Any:
            value = int.from_bytes(data[at : at + 32], "big")
            return value if value < limit else _NOT_CANONICAL

        return 1, read_uint
    return None


def _read_address(data: bytes, at: int) -> Any:
    word = data[at : at + 32]
    if any(word[:12]):
        return _NOT_CANONICAL
    return "0x" + word[12:].hex()


def _read_bool(data: bytes, at: int) -> Any:
    value = int.from_bytes(data[at : at + 32], "big")
    return _NOT_CANONICAL if value > 1 else value == 1


def _split_tuple(inner: str) -> list[str]:
    """The component types of a tuple type's inside, nested tuples kept whole."""
    parts: list[str] = []
    depth = 0
    current = ""
    for char in inner:
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
            continue
        depth += (char == "(") - (char == ")")
        current += char
    parts.append(current)
    return parts


@cache
def _layouts() -> Mapping[bytes, _Layout]:
    abi_events = {
        item["name"]: item for item in load_artifact(ESCROW_NAME).abi if item["type"] == "event"
    }
    layouts: dict[bytes, _Layout] = {}
    for cls in EVENT_CLASSES:
        item = abi_events.get(cls.__name__)
        if item is None:
            raise AssertionError(f"the escrow ABI has no event {cls.__name__}")
        abi_inputs = item["inputs"]
        names = tuple(_snake_case(i["name"]) for i in abi_inputs)
        declared = tuple(f.name for f in fields(cls))
        if names != declared:
            raise AssertionError(f"{cls.__name__} fields {declared} drifted from the ABI {names}")
        types = [_abi_type(i) for i in abi_inputs]
        topic = keccak(text=f"{cls.__name__}({','.join(types)})")
        layouts[topic] = _Layout(
            cls=cls,
            indexed_types=tuple(t for t, i in zip(types, abi_inputs, strict=True) if i["indexed"]),
            data_types=tuple(t for t, i in zip(types, abi_inputs, strict=True) if not i["indexed"]),
            inputs=tuple(
                (name, bool(i["indexed"]), _converter(i))
                for name, i in zip(names, abi_inputs, strict=True)
            ),
        )
    return layouts


def _abi_type(item: Mapping[str, Any]) -> str:
    kind = str(item["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(component) for component in item["components"])
        return f"({inner}){kind[len('tuple') :]}"
    return kind


def _converter(item: Mapping[str, Any]) -> Callable[[Any], Any]:
    internal = item.get("internalType")
    if internal == _TERMS_TYPE:
        return lambda value: PaymentTerms(*value)
    if internal == _METHOD_TYPE:
        return Method
    if item["type"] == "address":
        return to_checksum_address
    return _identity


def _identity(value: Any) -> Any:
    return value


def _snake_case(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()
