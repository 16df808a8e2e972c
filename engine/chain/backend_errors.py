"""Errors raised by chain backends, anvil process control and network presets.

Each class carries a stable ``code`` so callers (CLI, API, ops) can branch on it without
parsing messages; messages say what went wrong and what to do about it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import ClassVar


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
