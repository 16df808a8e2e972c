"""Errors of the chain layer.

Each error carries a stable `code` so the CLI, the API and logs can classify a failure without
parsing its message, which is written for people and may change.
"""

from typing import ClassVar


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
