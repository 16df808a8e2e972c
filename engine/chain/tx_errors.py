"""Errors of the transaction manager, each with a stable code and a message that names the fix.

Raised before anything is recorded (submit) or before anything is marked as sent (pump), so a
caller that sees one of these knows no transaction left the engine because of that call.
"""

from __future__ import annotations

from typing import ClassVar
from urllib.parse import urlsplit

from engine.chain.errors import ChainError

GWEI = 10**9


def shown_url(url: str) -> str:
    """Scheme, host and port only: providers put API keys in the path, query or userinfo."""
    parts = urlsplit(url)
    if not parts.hostname:
        return "the configured provider"
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


def _gwei(wei: int) -> str:
    return f"{wei / GWEI:.3f} gwei"  # display only; every amount is an int of wei


class RpcUnavailable(ChainError):
    """The node did not answer: refused, reset, or timed out.

    `maybe_delivered` is True when the request may have reached the node before the failure
    (a timeout or a reset after sending); a transaction sent that way must be looked up, not
    sent again with other bytes.
    """

    code: ClassVar[str] = "rpc_unavailable"

    def __init__(self, url: str, method: str, reason: str, *, maybe_delivered: bool) -> None:
        self.method = method
        self.reason = reason
        self.maybe_delivered = maybe_delivered
        super().__init__(
            f"the RPC node at {shown_url(url)} did not answer {method} ({reason}); "
            "check that the node is running and the RPC URL is right"
        )


class RpcRequestFailed(ChainError):
    """The node answered with a JSON-RPC error: it got the request and refused it.

    `data` is the error's data, e.g. the revert data of a failed eth_call or eth_estimateGas.
    """

    code: ClassVar[str] = "rpc_request_failed"

    def __init__(
        self, method: str, rpc_code: int, rpc_message: str, data: bytes | None = None
    ) -> None:
        self.method = method
        self.rpc_code = rpc_code
        self.rpc_message = rpc_message
        self.data = data
        super().__init__(f"the RPC node rejected {method}: {rpc_message} (code {rpc_code})")


class InsufficientFundsForGas(ChainError):
    """The signer cannot pay the worst-case cost (gas limit x max fee + value)."""

    code: ClassVar[str] = "insufficient_funds_for_gas"

    def __init__(self, address: str, need_wei: int, have_wei: int) -> None:
        self.address = address
        self.need_wei = need_wei
        self.have_wei = have_wei
        super().__init__(
            f"signer {address} has {have_wei} wei but needs {need_wei} wei for gas and value; "
            f"fund {address} with at least {need_wei - have_wei} wei"
        )


class FeeCapTooLow(ChainError):
    """The configured max fee per gas is below what the chain charges now."""

    code: ClassVar[str] = "fee_cap_too_low"

    def __init__(self, cap_wei: int, base_fee_wei: int) -> None:
        self.cap_wei = cap_wei
        self.base_fee_wei = base_fee_wei
        super().__init__(
            f"the max fee cap of {_gwei(cap_wei)} per gas is below the chain's base fee of "
            f"{_gwei(base_fee_wei)}; raise the cap (max_fee_per_gas_cap) or wait for cheaper "
            "blocks"
        )


class UnknownIdempotencyKey(ChainError):
    code: ClassVar[str] = "unknown_idempotency_key"

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(f"no transaction was submitted with idempotency key {key!r}")


class IdempotencyKeyReused(ChainError):
    """The key was first used for another payload; answering with the first record would
    hide that the caller asked for something different."""

    code: ClassVar[str] = "idempotency_key_reused"

    def __init__(self, key: str) -> None:
        self.key = key
        super().__init__(
            f"idempotency key {key!r} was already used for a different transaction "
            "(recipient, data, value or signer differ); use a new key for a new operation"
        )


class UnknownLane(ChainError):
    code: ClassVar[str] = "unknown_lane"

    def __init__(self, address: str, lanes: tuple[str, ...]) -> None:
        self.address = address
        super().__init__(
            f"{address} is not a signer of this transaction manager; signers: {', '.join(lanes)}"
        )


class TxChainMismatch(ChainError):
    """The node serves another chain than the one the manager signs for."""

    code: ClassVar[str] = "chain_id_mismatch"

    def __init__(self, expected: int, actual: int) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"the RPC node serves chain id {actual}, but the transaction manager signs for "
            f"chain id {expected}; check the RPC URL"
        )
