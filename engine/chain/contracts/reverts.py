"""Turns revert data into typed exceptions that name the contract's custom error.

Every revert of the escrow is a custom error with arguments; a caller (CLI, API, relay) should
see `AmountExceedsCapturable(amount=5, capturable=3)`, never a hex blob.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Mapping
from functools import cache
from typing import Any, ClassVar

from eth_abi import decode
from eth_utils import function_signature_to_4byte_selector, to_checksum_address

from engine.chain.contracts.compiler import ARTIFACTS_DIR, load_artifact
from engine.chain.errors import ChainError

# Solidity's built-in reverts, besides the contracts' custom errors.
_BUILTIN: Mapping[str, tuple[tuple[str, str], ...]] = {
    "Error": (("message", "string"),),
    "Panic": (("code", "uint256"),),
}


class ContractReverted(ChainError):
    """A call or transaction reverted; `error` and `args` name the custom error exactly."""

    code: ClassVar[str] = "contract_reverted"

    def __init__(self, error: str, args: Mapping[str, Any]) -> None:
        self.error = error
        self.args_by_name = dict(args)
        shown = ", ".join(f"{key}={_show(value)}" for key, value in args.items())
        super().__init__(f"{error}({shown})")


def _show(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    return str(value)


@cache
def _errors_by_selector() -> dict[bytes, tuple[str, tuple[tuple[str, str], ...]]]:
    entries: list[tuple[str, tuple[tuple[str, str], ...]]] = list(_BUILTIN.items())
    # Every checked-in contract: a token's own error (a blocklist, say) surfaces through the
    # escrow's calls unchanged.
    for path in sorted(ARTIFACTS_DIR.glob("*.json")):
        entries.extend(_abi_errors(load_artifact(path.stem).abi))
    table = {}
    for error, inputs in entries:
        signature = f"{error}({','.join(kind for _, kind in inputs)})"
        table[function_signature_to_4byte_selector(signature)] = (error, inputs)
    return table


def _abi_errors(abi: Iterable[Mapping[str, Any]]) -> list[tuple[str, tuple[tuple[str, str], ...]]]:
    return [
        (item["name"], tuple((i["name"], i["type"]) for i in item["inputs"]))
        for item in abi
        if item["type"] == "error"
    ]


def decode_revert(data: bytes) -> ContractReverted:
    """The typed exception for revert `data`; unknown selectors still give a readable name."""
    selector, payload = data[:4], data[4:]
    known = _errors_by_selector().get(selector)
    if known is None:
        return ContractReverted("UnknownError", {"data": data})
    error, inputs = known
    try:
        values = decode([kind for _, kind in inputs], payload)
    except Exception:  # malformed revert data from a hostile contract: show it raw
        return ContractReverted(error, {"data": payload})
    args = {
        name: to_checksum_address(value) if kind == "address" else value
        for (name, kind), value in zip(inputs, values, strict=True)
    }
    return ContractReverted(error, args)


def revert_data(error: BaseException) -> bytes | None:
    """The revert data attached to a failed call, if any.

    web3.py over JSON-RPC puts it in `data` as hex; eth-tester raises its own TransactionFailed
    whose first argument (or that of the py-evm Revert it wraps) is the raw bytes.
    """
    seen: BaseException | None = error
    for _ in range(_CAUSE_DEPTH_MAX):
        if seen is None:
            return None
        data = getattr(seen, "data", None)
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str) and data.startswith("0x"):
            return bytes.fromhex(data[2:])
        if seen.args and isinstance(seen.args[0], bytes):
            return seen.args[0]
        if seen.args and isinstance(seen.args[0], str):
            quoted = _TESTER_REVERT.fullmatch(seen.args[0])
            if quoted:
                value = ast.literal_eval(quoted.group(1))
                if isinstance(value, bytes):
                    return value
        seen = seen.__cause__ or seen.__context__
    return None


# eth-tester's eth_call reports revert data as the repr of the bytes in its message.
_TESTER_REVERT = re.compile(r"(?:execution reverted: )?(b(?:'.*'|\".*\"))", re.DOTALL)


_CAUSE_DEPTH_MAX = 8
