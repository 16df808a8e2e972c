"""Every command a user points at a wrong database or a dead RPC says so in one line,
`error[code]: message`, and exits 2: never a traceback, never exit 1 (kept for verdicts)."""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from engine.cli.app import app

# Port 1 is reserved (tcpmux) and closed here: a connection is refused at once.
DEAD_RPC_URL = "http://127.0.0.1:1/v2/s3cr3t-api-key"
DEAD_POSTGRES_URL = "postgresql://settle:hunter2@127.0.0.1:1/settle"
UNPARSEABLE_URL = "not a database url"
SECRETS = ("hunter2", "s3cr3t-api-key")
ERROR_LINE = re.compile(r"^error\[[a-z_]+\]: \S.*$")


def settle(args: Sequence[str], cwd: Path) -> tuple[int, list[str], str]:
    """Runs the real app; returns the exit code, every line it printed, and its stderr."""
    previous = Path.cwd()
    os.chdir(cwd)  # commands default to var/ and deployments/ under the working directory
    try:
        result = CliRunner().invoke(app, list(args))
    finally:
        os.chdir(previous)
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]
    return result.exit_code, lines, result.stderr


def assert_one_error_line(args: Sequence[str], cwd: Path, code: str) -> None:
    exit_code, lines, stderr = settle(args, cwd)
    assert (exit_code, len(lines)) == (2, 1), lines
    assert ERROR_LINE.match(lines[0]) and lines[0] == stderr.strip(), lines
    assert lines[0].startswith(f"error[{code}]"), lines
    assert not any(secret in lines[0] for secret in SECRETS), lines


# Commands that only read: they must refuse a database that is not there.
READING = (
    ("audit", "verify"),
    ("outbox", "list"),
    ("outbox", "retry", "op_unknown"),
    ("reconcile", "--rpc-url", DEAD_RPC_URL),
    ("replay", "--verify"),
    ("db", "bind", "--network", "anvil", "--rpc-url", DEAD_RPC_URL),
)
# Commands that create what they write to: a new path is not a mistake for them.
WRITING = (
    ("db", "upgrade"),
    ("demo",),
    ("chain-check", "--operations", "2"),
    ("bench", "core", "--payments", "1"),
)


@pytest.mark.parametrize("command", READING + WRITING, ids=" ".join)
@pytest.mark.parametrize(
    ("url", "code"),
    [
        (UNPARSEABLE_URL, "database_url_invalid"),
        (DEAD_POSTGRES_URL, "database_unreachable"),
    ],
    ids=["unparseable", "postgres-unreachable"],
)
def test_a_bad_database_url_is_one_error_line(
    command: tuple[str, ...], url: str, code: str, tmp_path: Path
) -> None:
    assert_one_error_line([*command, "--db", url], tmp_path, code)


@pytest.mark.parametrize("command", READING, ids=" ".join)
def test_a_typod_sqlite_path_is_database_missing_and_creates_nothing(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'no' / 'such' / 'settle.db'}"

    assert_one_error_line([*command, "--db", url], tmp_path, "database_missing")

    assert list(tmp_path.iterdir()) == []


@pytest.mark.postgres
@pytest.mark.parametrize("command", READING, ids=" ".join)
def test_a_missing_postgresql_database_is_database_missing(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        pytest.skip("TEST_DATABASE_URL not set")
    url = make_url(server).set(database="settle_no_such_database")
    assert_one_error_line(
        [*command, "--db", url.render_as_string(hide_password=False)], tmp_path, "database_missing"
    )


def test_bench_core_on_sqlite_says_it_needs_a_postgresql_server(tmp_path: Path) -> None:
    assert_one_error_line(
        ["bench", "core", "--db", f"sqlite:///{tmp_path / 'x.db'}"],
        tmp_path,
        "bench_needs_postgresql",
    )


@pytest.mark.parametrize(
    "command",
    [
        ("reconcile", "--rpc-url", DEAD_RPC_URL),
        ("db", "bind", "--network", "anvil", "--rpc-url", DEAD_RPC_URL),
        ("deploy", "--network", "anvil", "--rpc-url", DEAD_RPC_URL),
        ("deploy", "--network", "anvil", "--rpc-url", DEAD_RPC_URL, "--dry-run", "--json"),
    ],
    ids=" ".join,
)
def test_a_dead_rpc_url_is_one_error_line_without_its_api_key(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path / 'settle.db'}"
    assert settle(["db", "upgrade", "--db", url], tmp_path)[0] == 0
    args = [*command, "--db", url] if command[0] != "deploy" else list(command)

    assert_one_error_line(args, tmp_path, "rpc_unreachable")
