"""The errors `settle chain-check` refuses or stops with, each with a stable code."""

from __future__ import annotations

from typing import ClassVar

from engine.chain.errors import ChainError
from engine.tools.chain_check.workload import OPERATIONS_MAX, OPERATIONS_MIN


class ChainCheckError(ChainError):
    """Base of the chain check's own errors."""

    code: ClassVar[str] = "chain_check_error"


class ChainCheckNeedsAnvil(ChainCheckError):
    """Reorgs, dropped transactions and mining control exist only on a chain the engine runs."""

    code: ClassVar[str] = "chain_check_needs_anvil"

    def __init__(self, network: str) -> None:
        self.network = network
        super().__init__(
            f"chain-check injects reorgs, dropped transactions and mining changes, which only a "
            f"local anvil started by the engine allows; it refuses network {network!r}: run it "
            "with --network anvil"
        )


class ChainCheckInvalidSize(ChainCheckError):
    code: ClassVar[str] = "chain_check_invalid_size"

    def __init__(self, operations: int) -> None:
        self.operations = operations
        super().__init__(
            f"chain-check runs between {OPERATIONS_MIN} and {OPERATIONS_MAX} operations, not "
            f"{operations}; pass --operations within that range"
        )


class ChainCheckDatabaseInUse(ChainCheckError):
    """The check starts a new anvil, so signer nonces or a checkpoint of an older one would be
    wrong, and its idempotency keys would meet the previous run's."""

    code: ClassVar[str] = "chain_check_database_in_use"

    def __init__(self) -> None:
        super().__init__(
            "the database already holds signer lanes or an indexer checkpoint for anvil's chain "
            "id; give chain-check an empty database (or none, for a temporary SQLite file)"
        )


class ChainCheckStalled(ChainCheckError):
    code: ClassVar[str] = "chain_check_stalled"
