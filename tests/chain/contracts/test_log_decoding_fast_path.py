"""The indexer's fast path for fixed-size event data reads exactly what eth_abi reads, and
leaves anything that is not a canonical encoding to eth_abi."""

from __future__ import annotations

from typing import Any

from eth_abi import decode, encode
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.chain.contracts.logs import _decode_static, _layouts, _split_tuple


def _value(kind: str) -> st.SearchStrategy[Any]:
    if kind.startswith("("):
        return st.tuples(*(_value(part) for part in _split_tuple(kind[1:-1])))
    if kind == "address":
        return st.binary(min_size=20, max_size=20).map(lambda raw: "0x" + raw.hex())
    if kind == "bool":
        return st.booleans()
    if kind == "bytes32":
        return st.binary(min_size=32, max_size=32)
    if kind == "bytes":
        return st.binary(max_size=100)
    bits = int(kind.removeprefix("uint"))
    return st.integers(min_value=0, max_value=2**bits - 1)


LAYOUTS = sorted(_layouts().values(), key=lambda layout: layout.cls.__name__)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_fast_path_reads_every_event_as_eth_abi_does(data: st.DataObject) -> None:
    for layout in LAYOUTS:
        types = list(layout.data_types)
        values = data.draw(st.tuples(*(_value(kind) for kind in types)), label=layout.cls.__name__)
        encoded = encode(types, list(values))
        fast = _decode_static(types, encoded)
        if "bytes" in types:  # dynamic: left to eth_abi
            assert fast is None
        else:
            assert fast == list(decode(types, encoded))


@given(st.binary(min_size=1, max_size=31), st.integers(min_value=0, max_value=127))
def test_data_that_is_not_canonical_is_left_to_eth_abi(junk: bytes, word: int) -> None:
    types = ["address", "uint16", "bool"]
    canonical = encode(types, ["0x" + "11" * 20, 7, True])
    assert _decode_static(types, canonical + junk) is None  # not a whole number of words
    dirty = bytearray(canonical)
    dirty[word % 12] = 1  # a non-zero byte in an address's padding
    assert _decode_static(types, bytes(dirty)) is None
    too_big = encode(["uint256", "uint256", "uint256"], [1, 2**16, 1])
    assert _decode_static(types, too_big) is None  # a uint16 word out of range
    not_bool = encode(["uint256", "uint256", "uint256"], [1, 1, 2])
    assert _decode_static(types, not_bool) is None
