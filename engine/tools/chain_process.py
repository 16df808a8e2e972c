"""`settle chain up|down`: one anvil in the background, outliving the command that started it.

The running node is described by var/anvil.json (pid, port, URL, chain id), which `down`,
`settle deploy --network anvil` and a later `up` read. Both commands are idempotent: `up`
reports the node that already runs, `down` says when there is nothing to stop.

Nothing here trusts the file alone: a pid is signalled only while that process is an anvil
answering on the recorded port with the recorded chain id (pids are reused after a reboot).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import asdict
from pathlib import Path
from typing import Final

# anvil.probe_chain_id is the readiness probe AnvilProcess uses; shared, not copied.
from engine.chain.backends import anvil
from engine.chain.backends.anvil import (
    DEFAULT_PORT,
    DEFAULT_STATE_DIR,
    AnvilConfig,
    RunningChain,
    is_alive,
    is_ours,
    process_exists,
    read_state,
    resolve_anvil_binary,
    state_path,
)
from engine.chain.errors import AnvilStartFailed, ChainError
from engine.chain.networks import ANVIL_CHAIN_ID

LOG_FILE_NAME: Final = "anvil.log"
POLL_INTERVAL_S: Final = 0.02
STOP_TIMEOUT_S: Final = 5.0
LOG_TAIL_BYTES_MAX: Final = 4000
PORT_MAX: Final = 65_535


class PortInUse(ChainError):
    code = "port_in_use"


class ChainOptionInvalid(ChainError):
    code = "chain_option_invalid"


class ChainAlreadyUp(ChainError):
    """A chain is up with other settings than the ones asked for."""

    code = "chain_already_up"


def chain_up(
    state_dir: Path = DEFAULT_STATE_DIR,
    *,
    port: int = DEFAULT_PORT,
    chain_id: int = ANVIL_CHAIN_ID,
    block_time_s: float | None = None,
) -> tuple[RunningChain, bool]:
    """Starts anvil detached; returns it and whether it was started now (False: it ran)."""
    if not 0 < port <= PORT_MAX:
        raise ChainOptionInvalid(f"--port {port} is not a TCP port (1 to {PORT_MAX})")
    if chain_id <= 0 or (block_time_s is not None and block_time_s <= 0):
        raise ChainOptionInvalid("--chain-id and --block-time must be positive")
    current = read_state(state_dir)
    if current is not None and is_alive(current):
        if (current.port, current.chain_id, current.block_time_s) != (
            port,
            chain_id,
            block_time_s,
        ):
            raise ChainAlreadyUp(
                f"a chain is already up at {current.url} (chain id {current.chain_id}, "
                f"block time {current.block_time_s or 'automine'}): run `settle chain down` "
                "first to start another"
            )
        return current, False
    if current is not None and is_ours(current):
        raise ChainAlreadyUp(
            f"the anvil started earlier (pid {current.pid}) runs but does not answer at "
            f"{current.url}: run `settle chain down` first"
        )
    state_path(state_dir).unlink(missing_ok=True)
    if not _port_is_free(port):
        raise PortInUse(
            f"port {port} on 127.0.0.1 is taken by another program: stop it or pass --port"
        )
    config = AnvilConfig(chain_id=chain_id, block_time_s=block_time_s)
    chain = _spawn(config, port, state_dir)
    _write_state(state_dir, chain)
    return chain, True


def chain_down(state_dir: Path = DEFAULT_STATE_DIR) -> RunningChain | None:
    """Stops the chain `chain up` started; returns it, or None if none was running (a state
    file left by a node that is gone is removed all the same)."""
    chain = read_state(state_dir)
    if chain is not None and not is_ours(chain):
        chain = None  # the node it describes is gone
    if chain is not None:
        _stop(chain.pid)
    state_path(state_dir).unlink(missing_ok=True)
    return chain


def _spawn(config: AnvilConfig, port: int, state_dir: Path) -> RunningChain:
    binary = resolve_anvil_binary()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / LOG_FILE_NAME
    with log_path.open("wb") as log:
        # A session of its own: the terminal's Ctrl-C and hang-up do not reach it, and it
        # outlives this process, which is the point of `up`.
        process = subprocess.Popen(
            [str(binary), *config.arguments(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    chain = RunningChain(process.pid, port, config.chain_id, config.block_time_s)
    deadline = time.monotonic() + config.startup_timeout_s
    while process.poll() is None:
        answered = anvil.probe_chain_id(chain.url)
        if answered == config.chain_id:
            return chain
        if answered is not None or time.monotonic() > deadline:
            _stop(process.pid)
            reason = (
                f"port {port} answers chain id {answered}"
                if answered is not None
                else f"no answer within {config.startup_timeout_s:g} s"
            )
            raise AnvilStartFailed(reason, _tail(log_path))
        time.sleep(POLL_INTERVAL_S)
    raise AnvilStartFailed(f"anvil exited with status {process.returncode}", _tail(log_path))


def _stop(pid: int) -> None:
    """SIGTERM, then SIGKILL after STOP_TIMEOUT_S; returns once the process is gone."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            if not process_exists(pid):
                return
            time.sleep(POLL_INTERVAL_S)


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def _tail(path: Path) -> str:
    with path.open("rb") as log:
        size = log.seek(0, os.SEEK_END)
        log.seek(max(0, size - LOG_TAIL_BYTES_MAX))
        return log.read().decode(errors="replace")


def _write_state(state_dir: Path, chain: RunningChain) -> None:
    path = state_path(state_dir)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps({**asdict(chain), "url": chain.url}, indent=2) + "\n")
    os.replace(partial, path)
