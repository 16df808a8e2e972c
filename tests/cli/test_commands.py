"""What a newcomer meets: help, version, the demo's database inspected afterwards, binding a
fresh database, the outbox at 80 columns, URLs shown without secrets, `db upgrade` creating a
PostgreSQL database."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from typer.testing import CliRunner

from engine.chain.backends import EmbeddedBackend
from engine.chain.backends.embedded_state import state_path_for
from engine.cli.app import app
from engine.store.db import normalise_url, upgrade
from engine.store.redaction import redact_url
from engine.tools.localnet import deploy_local

SETTLE = Path(sys.executable).with_name("settle")
OP_ID = re.compile(r"\bop_[0-9a-f]{40}\b")
DATE = re.compile(r"\b\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2} UTC\b")


def settle(*args: str, cwd: Path, columns: int = 80) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SETTLE), *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=cwd,
        env={**os.environ, "COLUMNS": str(columns)},
    )


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, str]]:
    """The database `settle demo` leaves, with its embedded chain beside it."""
    folder = tmp_path_factory.mktemp("demo")
    url = f"sqlite:///{folder / 'var' / 'demo.db'}"
    result = settle("demo", "--db", url, cwd=folder)
    assert result.returncode == 0, result.stderr
    assert "5 settled" in result.stdout
    assert re.search(r"trial balance of TUSD on chain 131277322940537: 0\b", result.stdout)
    assert "(8 payments and 1 asset, each checked)" in result.stdout
    yield folder, url


def test_version_and_short_help() -> None:
    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and re.fullmatch(r"settle \d+\.\d+\.\d+\n", version.stdout)
    assert runner.invoke(app, ["-h"]).stdout == runner.invoke(app, ["--help"]).stdout
    assert runner.invoke(app, ["outbox", "list", "-h"]).exit_code == 0


def test_help_shows_error_code_brackets_and_no_bool_placeholders() -> None:
    runner = CliRunner()
    assert "error[code]: message" in runner.invoke(app, ["--help"]).stdout
    deploy_help = runner.invoke(app, ["deploy", "--help"]).stdout
    assert "--dry-run" in deploy_help and "<bool>" not in deploy_help


def test_the_demo_database_reconciles_replays_and_lists_its_outbox_afterwards(
    demo_db: tuple[Path, str],
) -> None:
    folder, url = demo_db
    reconciled = settle("reconcile", "--network", "embedded", "--db", url, cwd=folder)
    assert (reconciled.returncode, reconciled.stdout) == (0, "9 matched, 0 mismatched\n")
    replayed = settle("replay", "--verify", "--db", url, cwd=folder)
    assert replayed.returncode == 0 and "identical" in replayed.stdout
    audited = settle("audit", "verify", "--db", url, cwd=folder)
    assert audited.returncode == 0 and "intact" in audited.stdout


def test_outbox_list_fits_80_columns_with_full_ids_and_dates(demo_db: tuple[Path, str]) -> None:
    folder, url = demo_db
    listed = settle("outbox", "list", "--db", url, cwd=folder, columns=80)
    assert listed.returncode == 0, listed.stderr
    lines = listed.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    assert len(OP_ID.findall(listed.stdout)) == 8 + 8 + 3  # authorize, capture/void, round 3
    assert len(DATE.findall(listed.stdout)) == len(OP_ID.findall(listed.stdout))


def test_a_second_demo_on_the_same_database_is_refused_in_one_line(
    demo_db: tuple[Path, str],
) -> None:
    folder, url = demo_db
    again = settle("demo", "--db", url, cwd=folder)
    assert again.returncode == 2 and again.stdout == ""
    assert again.stderr.startswith("error[demo_database_in_use]: ")
    assert len(again.stderr.splitlines()) == 1


def test_a_fresh_database_is_told_how_to_bind_then_binds_and_reconciles(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    backend = EmbeddedBackend(state_path_for(url))
    try:
        escrow = deploy_local(backend).escrow.address
    finally:
        backend.close()
    runner = CliRunner()

    unbound = runner.invoke(app, ["reconcile", "--network", "embedded", "--db", url])
    assert unbound.exit_code == 2
    assert unbound.stderr.startswith("error[chain_unbound]: ")
    assert "settle db bind --network NAME" in unbound.stderr

    bound = runner.invoke(
        app, ["db", "bind", "--network", "embedded", "--escrow", escrow, "--db", url]
    )
    assert bound.exit_code == 0, bound.stderr
    assert escrow in bound.stdout
    reconciled = runner.invoke(app, ["reconcile", "--network", "embedded", "--db", url])
    assert reconciled.exit_code == 0, reconciled.stderr


def test_db_bind_without_a_deployment_record_names_the_file(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    EmbeddedBackend(state_path_for(url)).close()
    previous = Path.cwd()
    os.chdir(tmp_path)
    try:
        result = CliRunner().invoke(app, ["db", "bind", "--network", "embedded", "--db", url])
    finally:
        os.chdir(previous)
    assert result.exit_code == 2
    assert result.stderr.startswith(
        "error[deployment_missing]: no deployment record deployments/131277322940537.json"
    )


def test_reconcile_embedded_without_the_demo_chain_says_which_file_is_missing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"
    upgrade(url)
    result = CliRunner().invoke(app, ["reconcile", "--network", "embedded", "--db", url])
    assert result.exit_code == 2
    assert result.stderr.startswith("error[embedded_state_missing]: ")
    assert not state_path_for(url).exists()


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://127.0.0.1:8545", "http://127.0.0.1:8545"),
        ("https://eth-sepolia.g.example.com/v2/s3cr3tKey", "https://eth-sepolia.g.example.com/…"),
        ("https://user:pw@rpc.example.org:8443/?key=abc", "https://rpc.example.org:8443/…"),
        ("postgresql://app:hunter2@db:5432/settle", "postgresql://app@db:5432/settle"),
        ("postgresql://app@db/settle?password=hunter2", "postgresql://app@db/settle?…"),
        ("sqlite:///var/demo.db", "sqlite:///var/demo.db"),
        ("no url at all", "the configured URL (unparseable)"),
    ],
)
def test_urls_are_shown_without_passwords_api_keys_or_queries(url: str, shown: str) -> None:
    assert redact_url(url) == shown


@pytest.mark.postgres
def test_db_upgrade_creates_a_missing_postgresql_database() -> None:
    server = os.environ.get("TEST_DATABASE_URL")
    if not server:
        pytest.skip("TEST_DATABASE_URL not set")
    name = f"settle_cli_{uuid.uuid4().hex[:12]}"
    url = make_url(server).set(database=name).render_as_string(hide_password=False)
    admin = create_engine(
        normalise_url(server).set(database="postgres"), isolation_level="AUTOCOMMIT"
    )
    try:
        result = CliRunner().invoke(app, ["db", "upgrade", "--db", url])
        assert result.exit_code == 0, result.stderr
        audited = CliRunner().invoke(app, ["audit", "verify", "--db", url, "--json"])
        assert audited.exit_code == 0 and '"ok": true' in audited.stdout
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
