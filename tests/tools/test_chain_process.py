"""`settle chain up|down`: one anvil in the background, found again by later commands, and
never left running by `down`."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from web3 import HTTPProvider, Web3

from engine.chain.backends.anvil import anvil_accounts, process_exists, running_chain
from engine.chain.errors import AnvilStartFailed
from engine.cli.chain import cmd_chain_down, cmd_chain_up
from engine.cli.deploy import cmd_deploy
from engine.deploy.escrow_create2 import escrow_address
from engine.tools.chain_process import (
    ChainAlreadyUp,
    ChainOptionInvalid,
    PortInUse,
    chain_down,
    chain_up,
)

pytestmark = pytest.mark.anvil

STATE_FILE = Path("var") / "anvil.json"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, anvil_binary: Path) -> Iterator[Path]:
    """An empty working directory; whatever a failing test left running is stopped after it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ANVIL_BIN", str(anvil_binary))
    yield tmp_path
    chain_down()


def test_up_starts_anvil_in_the_background_and_down_stops_it(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()

    assert cmd_chain_up(port=port) == 0

    url = f"http://127.0.0.1:{port}"
    assert capsys.readouterr().out.splitlines()[-1] == url
    recorded = json.loads(STATE_FILE.read_text())
    assert recorded["url"] == url and recorded["chain_id"] == 31337
    assert Web3(HTTPProvider(url)).eth.chain_id == 31337
    pid = recorded["pid"]
    assert os.getpgid(pid) == pid  # a session of its own: the terminal's signals miss it

    assert cmd_chain_down() == 0

    assert f"stopped anvil at {url} (pid {pid})" in capsys.readouterr().out
    assert not process_exists(pid)
    assert not STATE_FILE.exists()
    assert running_chain() is None


def test_up_twice_reports_the_running_chain_and_down_twice_says_nothing_runs(
    in_tmp: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    port = free_port()
    first, started = chain_up(port=port, chain_id=84532, block_time_s=1)
    assert started

    assert cmd_chain_up(port=port, chain_id=84532, block_time=1) == 0

    assert f"already running: chain id 84532, a block every 1 s, pid {first.pid}" in (
        capsys.readouterr().out
    )
    assert chain_down() == first
    assert cmd_chain_down() == 0
    assert "no chain is running" in capsys.readouterr().out
    assert not process_exists(first.pid)


def test_up_with_other_settings_while_a_chain_runs_is_refused(in_tmp: Path) -> None:
    running, _ = chain_up(port=free_port())

    with pytest.raises(ChainAlreadyUp, match="settle chain down") as raised:
        chain_up(port=running.port, chain_id=11155111)

    assert raised.value.code == "chain_already_up"
    assert running_chain() == running


def test_up_on_a_port_another_program_holds_is_refused(in_tmp: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]

        with pytest.raises(PortInUse, match=f"port {port}"):
            chain_up(port=port)

    assert not STATE_FILE.exists()


def test_invalid_options_are_refused(in_tmp: Path) -> None:
    for options in ({"port": 0}, {"port": 70_000}, {"chain_id": 0}, {"block_time_s": 0}):
        with pytest.raises(ChainOptionInvalid):
            chain_up(**options)  # type: ignore[arg-type]


def test_state_file_of_a_dead_node_is_cleaned_up_without_signalling_anyone(
    in_tmp: Path,
) -> None:
    finished = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    dead_pid = int(finished.stdout)
    STATE_FILE.parent.mkdir()
    STATE_FILE.write_text(
        json.dumps({"pid": dead_pid, "port": free_port(), "chain_id": 31337, "block_time_s": None})
    )

    assert running_chain() is None
    assert chain_down() is None
    assert not STATE_FILE.exists()


def test_anvil_that_exits_at_once_reports_its_stderr(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = in_tmp / "anvil"
    failing.write_text("#!/bin/sh\necho 'unknown hardfork' >&2\nexit 3\n")
    failing.chmod(0o755)
    monkeypatch.setenv("ANVIL_BIN", str(failing))

    with pytest.raises(AnvilStartFailed, match="unknown hardfork"):
        chain_up(port=free_port())

    assert not STATE_FILE.exists()


def test_deploy_to_anvil_without_rpc_url_uses_the_chain_that_up_started(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SETTLE_DEPLOYER_KEY", raising=False)
    running, _ = chain_up(port=free_port())

    assert cmd_deploy("anvil", None, None, dry_run=False, as_json=True) == 0

    deployed = json.loads(capsys.readouterr().out)
    admin = anvil_accounts(1)[0].address
    assert deployed["escrow"]["address"] == escrow_address(admin)
    assert Web3(HTTPProvider(running.url)).eth.get_code(escrow_address(admin)) != b""


def test_deploy_to_anvil_takes_the_chain_id_up_was_given_and_fractional_block_times(
    in_tmp: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SETTLE_DEPLOYER_KEY", raising=False)
    assert cmd_chain_up(port=free_port(), chain_id=1337, block_time=0.5) == 0
    assert "chain id 1337, a block every 0.5 s" in capsys.readouterr().out

    assert cmd_deploy("anvil", None, None, dry_run=False, as_json=True) == 0

    deployed = json.loads(capsys.readouterr().out)
    assert deployed["chain_id"] == 1337
    assert (in_tmp / "deployments" / "1337.json").exists()
    assert cmd_chain_down() == 0
