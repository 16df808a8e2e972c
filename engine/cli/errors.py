"""Errors the command line itself refuses with, and how it recognises the engine's typed
errors: every class of ours with a stable `code` (chain, deploy, domain, store, tools...)."""

from __future__ import annotations


class CliError(Exception):
    code = "cli_error"


class EmbeddedStateMissing(CliError):
    """`--network embedded` names the chain a SQLite database keeps beside itself; there is
    none (the database was not made by `settle demo`, or the file was moved)."""

    code = "embedded_state_missing"


def user_error_code(error: BaseException) -> str | None:
    """The error's code when it is one of the engine's typed errors, else None (a bug, which
    must show its traceback). Third-party errors with a `code` (SQLAlchemy's) do not count."""
    code = getattr(type(error), "code", None)
    if isinstance(code, str) and type(error).__module__.startswith("engine."):
        return code
    return None
