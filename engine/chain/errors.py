"""Errors of the chain layer: compiler and artifacts, backends and network presets, JSON-RPC
and the transaction manager.

Each error carries a stable `code` so the CLI, the API and logs can classify a failure without
parsing its message, which is written for people and may change. The transaction manager's
errors are raised before anything is recorded (submit) or marked as sent (pump), so a caller
that sees one knows no transaction left the engine because of that call.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar

from engine.store.redaction import redact_url


class ChainError(Exception):
    """Base of every error the chain layer raises on purpose."""

    code: ClassVar[str] = "chain_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class CompilerUnavailable(ChainError):
    """Neither a native solc of the pinned version nor Node with the pinned solc-js is present."""

    code = "compiler_unavailable"


class CompilationFailed(ChainError):
    """The compiler rejected the sources, or its answer could not be used."""

    code = "compilation_failed"

    def __init__(self, message: str, errors: tuple[str, ...] = ()) -> None:
        details = "".join(f"\n{error.rstrip()}" for error in errors)
        super().__init__(f"{message}{details}")
        self.errors = errors


class ArtifactMissing(ChainError):
    """A contract's compiled artifact is not checked in; `settle contracts build` writes it."""

    code = "artifact_missing"


class ChainBackendError(Exception):
    """Base of every error in this module."""

    code: ClassVar[str] = "chain_backend_error"


class UnsupportedOnBackend(ChainBackendError):
    """A test-only operation (time travel, snapshots, mining) was asked of a real network."""

    code: ClassVar[str] = "unsupported_on_backend"

    def __init__(self, operation: str, backend: str) -> None:
        self.operation = operation
        self.backend = backend
        super().__init__(
            f"{operation} is not supported on the {backend!r} backend; "
            "use the embedded or anvil backend for tests that control the chain"
        )


class AnvilNotFound(ChainBackendError):
    """The anvil binary is not where the npm package or ANVIL_BIN says it is."""

    code: ClassVar[str] = "anvil_not_found"

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        self.reason = reason
        super().__init__(
            f"anvil binary not usable at {path}: {reason}; "
            "run `npm ci` in the project root or set ANVIL_BIN to an anvil executable"
        )


class AnvilStartFailed(ChainBackendError):
    """anvil exited or did not answer in time; the tail of its stderr says why."""

    code: ClassVar[str] = "anvil_start_failed"

    def __init__(self, reason: str, stderr_tail: str) -> None:
        self.reason = reason
        self.stderr_tail = stderr_tail
        detail = stderr_tail.strip() or "(anvil wrote nothing to stderr)"
        super().__init__(f"anvil did not start: {reason}\n--- anvil stderr (tail) ---\n{detail}")


class UnknownNetwork(ChainBackendError):
    """A network name that has no preset."""

    code: ClassVar[str] = "unknown_network"

    def __init__(self, name: str, valid_names: Iterable[str]) -> None:
        self.name = name
        self.valid_names = tuple(sorted(valid_names))
        super().__init__(f"unknown network {name!r}; valid names: {', '.join(self.valid_names)}")


class ChainIdMismatch(ChainBackendError):
    """The node behind a URL serves another chain than the one asked for.

    Checked before anything is signed: a transaction signed for one chain id must never be
    sent to a node of another chain by a mistyped URL.
    """

    code: ClassVar[str] = "chain_id_mismatch"

    def __init__(self, network: str, expected: int, actual: int) -> None:
        self.network = network
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"the RPC node serves chain id {actual}, but network {network!r} has chain id "
            f"{expected}; check the RPC URL"
        )


class SnapshotNotFound(ChainBackendError):
    """A snapshot token that is unknown or was already used by a revert."""

    code: ClassVar[str] = "snapshot_not_found"

    def __init__(self, token: str) -> None:
        self.token = token
        super().__init__(
            f"no live snapshot {token!r}: snapshots are single-use, and reverting to one "
            "also discards every snapshot taken after it"
        )


class TimestampNotIncreasing(ChainBackendError):
    """Time travel to a timestamp that is not after the latest block's."""

    code: ClassVar[str] = "timestamp_not_increasing"

    def __init__(self, requested: int, latest: int) -> None:
        self.requested = requested
        self.latest = latest
        super().__init__(
            f"next block timestamp {requested} must be greater than the latest block "
            f"timestamp {latest}"
        )


GWEI = 10**9


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
            f"the RPC node at {redact_url(url)} did not answer {method} ({reason}); "
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


class DeploymentMissing(ChainError):
    """No deployment record for the chain: the engine runs only against a deployed escrow."""

    code = "deployment_missing"


class DeploymentRecordInvalid(ChainError):
    code = "deployment_record_invalid"


class RpcUrlMissing(ChainError):
    """A network reached over JSON-RPC, with no URL given and none in its environment variable."""

    code = "rpc_url_missing"
