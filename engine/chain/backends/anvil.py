"""Run anvil (from the pinned npm package) as a child process on a free loopback port.

The binary comes from node_modules so that every machine runs the anvil version that
package-lock.json pins; ANVIL_BIN overrides it for a hand-built or system anvil.
"""

from __future__ import annotations

import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import TracebackType
from typing import IO, Final

from eth_account import Account
from eth_account.signers.local import LocalAccount

from engine.chain.errors import AnvilNotFound, AnvilStartFailed
from engine.chain.networks import ANVIL_CHAIN_ID

PROJECT_ROOT = Path(__file__).resolve().parents[3]

# anvil's default dev mnemonic; passed explicitly so the keys derived here cannot drift from
# the accounts anvil funds if a future anvil changes its default.
ANVIL_MNEMONIC = "test test test test test test test test test test test junk"

_NPM_OS = {"linux": "linux", "darwin": "darwin"}
_NPM_ARCH = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

PORT_ATTEMPTS_MAX = 3
READY_POLL_INTERVAL_S = 0.02
READY_PROBE_TIMEOUT_S = 1.0
STDERR_TAIL_BYTES_MAX = 4000
ACCOUNTS_COUNT_MAX = 100


@lru_cache(maxsize=8)
def anvil_accounts(count: int) -> tuple[LocalAccount, ...]:
    """The funded accounts anvil derives from ANVIL_MNEMONIC (cached: derivation is slow)."""
    assert 0 < count <= ACCOUNTS_COUNT_MAX, count
    Account.enable_unaudited_hdwallet_features()
    return tuple(
        Account.from_mnemonic(ANVIL_MNEMONIC, account_path=f"m/44'/60'/0'/0/{index}")
        for index in range(count)
    )


def resolve_anvil_binary(
    project_root: Path = PROJECT_ROOT, environ: Mapping[str, str] = os.environ
) -> Path:
    override = environ.get("ANVIL_BIN")
    if override:
        path = Path(override)
    else:
        npm_os = _NPM_OS.get(sys.platform)
        npm_arch = _NPM_ARCH.get(platform.machine().lower())
        package_root = project_root / "node_modules" / "@foundry-rs"
        if npm_os is None or npm_arch is None:
            raise AnvilNotFound(
                str(package_root),
                f"no anvil npm package for {sys.platform}/{platform.machine()}",
            )
        path = package_root / f"anvil-{npm_os}-{npm_arch}" / "bin" / "anvil"
    if not path.is_file():
        raise AnvilNotFound(str(path), "no such file")
    if not os.access(path, os.X_OK):
        raise AnvilNotFound(str(path), "not executable")
    return path


@dataclass(frozen=True)
class AnvilConfig:
    chain_id: int = ANVIL_CHAIN_ID
    # The contracts are compiled for cancun; the node must not run a later fork's rules.
    hardfork: str = "cancun"
    accounts_count: int = 10
    balance_eth: int = 10_000
    # None: mine a block per transaction (automine); otherwise also mine every N seconds.
    block_time_s: float | None = None  # anvil takes fractions of a second
    # False: mine only on evm_mine/anvil_mine (tests of pending and dropped transactions).
    automine: bool = True
    startup_timeout_s: float = 30.0
    stop_timeout_s: float = 5.0

    def __post_init__(self) -> None:
        assert 0 < self.accounts_count <= ACCOUNTS_COUNT_MAX, self
        assert self.balance_eth > 0, self
        assert self.block_time_s is None or self.block_time_s > 0, self
        assert self.startup_timeout_s > 0 and self.stop_timeout_s > 0, self

    def arguments(self, port: int) -> list[str]:
        args = [
            "--host", "127.0.0.1",
            "--port", str(port),
            "--chain-id", str(self.chain_id),
            "--hardfork", self.hardfork,
            "--mnemonic", ANVIL_MNEMONIC,
            "--accounts", str(self.accounts_count),
            "--balance", str(self.balance_eth),
            "--quiet",
        ]  # fmt: skip
        if self.block_time_s is not None:
            args += ["--block-time", f"{self.block_time_s:g}"]
        if not self.automine:
            args.append("--no-mining")
        return args


class AnvilProcess:
    """One anvil child process; a context manager that always stops what it started."""

    def __init__(self, config: AnvilConfig | None = None, binary: Path | None = None) -> None:
        self.config = config or AnvilConfig()
        self._binary = binary
        self._process: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None
        self._port: int | None = None

    @classmethod
    def started_elsewhere(cls, port: int, config: AnvilConfig) -> AnvilProcess:
        """A handle on a node another process started and will stop (the node an engine
        worker shares with the process that launched it): its URL and settings, no child."""
        handle = cls(config)
        handle._port = port
        return handle

    @property
    def port(self) -> int:
        assert self._port is not None, "anvil is not running"
        return self._port

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self._process is not None, "anvil is not running"
        return self._process.pid

    def start(self) -> None:
        assert self._process is None, "anvil is already running"
        binary = self._binary or resolve_anvil_binary()
        # The free port is found by binding and releasing it, so another process can take
        # it before anvil binds; that race is retried with a new port, a bounded few times.
        # (Were the taker another node of the same chain id, it would answer the readiness
        # probe instead; bind(0) picks a random port, so that needs two near-simultaneous
        # random picks to collide, and --port 0 would cost --quiet, needed to read the port.)
        tail = ""
        for _ in range(PORT_ATTEMPTS_MAX):
            port = _free_loopback_port()
            self._spawn(binary, port)
            if self._wait_until_ready(port):
                self._port = port
                return
            tail = self._stop_and_read_stderr_tail()
            if "address already in use" not in tail.lower():
                raise AnvilStartFailed(f"anvil exited on port {port}", tail)
        raise AnvilStartFailed(f"no free port after {PORT_ATTEMPTS_MAX} attempts", tail)

    def stop(self) -> None:
        self._stop_and_read_stderr_tail()
        self._port = None

    def __enter__(self) -> AnvilProcess:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def _spawn(self, binary: Path, port: int) -> None:
        # stderr goes to a file, not a pipe: nobody reads a pipe while anvil runs, and a
        # full pipe would block anvil. It lives as long as the process, so no `with` here:
        # _stop_and_read_stderr_tail closes it.
        self._stderr = tempfile.TemporaryFile()  # noqa: SIM115
        try:
            self._process = subprocess.Popen(
                [str(binary), *self.config.arguments(port)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=self._stderr,
            )
        except (FileNotFoundError, PermissionError) as exc:
            self._stop_and_read_stderr_tail()
            raise AnvilNotFound(str(binary), exc.strerror or str(exc)) from exc
        except OSError as exc:
            self._stop_and_read_stderr_tail()
            raise AnvilStartFailed(f"cannot execute {binary}: {exc}", "") from exc

    def _wait_until_ready(self, port: int) -> bool:
        """True once anvil answers eth_chainId; False if it exited. Raises on timeout."""
        assert self._process is not None
        deadline = time.monotonic() + self.config.startup_timeout_s
        while self._process.poll() is None:
            chain_id = probe_chain_id(f"http://127.0.0.1:{port}")
            if chain_id is not None:
                if chain_id != self.config.chain_id:
                    tail = self._stop_and_read_stderr_tail()
                    raise AnvilStartFailed(
                        f"port {port} answers chain id {chain_id}, expected {self.config.chain_id}",
                        tail,
                    )
                return True
            if time.monotonic() > deadline:
                tail = self._stop_and_read_stderr_tail()
                raise AnvilStartFailed(
                    f"no answer to eth_chainId within {self.config.startup_timeout_s} s", tail
                )
            time.sleep(READY_POLL_INTERVAL_S)
        return False

    def _stop_and_read_stderr_tail(self) -> str:
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=self.config.stop_timeout_s)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        stderr, self._stderr = self._stderr, None
        if stderr is None:
            return ""
        with stderr:
            size = stderr.seek(0, os.SEEK_END)
            stderr.seek(max(0, size - STDERR_TAIL_BYTES_MAX))
            return stderr.read().decode(errors="replace")


def _free_loopback_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def probe_chain_id(url: str) -> int | None:
    """The node's chain id, or None while nothing answers on the port yet."""
    body = json.dumps({"jsonrpc": "2.0", "id": 1, "method": "eth_chainId", "params": []})
    request = urllib.request.Request(
        url, data=body.encode(), headers={"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=READY_PROBE_TIMEOUT_S) as response:
            return int(json.load(response)["result"], 16)
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return None


# `settle chain up` leaves one anvil running in the background and describes it in
# var/anvil.json; the engine finds a local network's node through it.
DEFAULT_STATE_DIR: Final = Path("var")
STATE_FILE_NAME: Final = "anvil.json"
DEFAULT_PORT: Final = 8545
DEFAULT_URL: Final = f"http://127.0.0.1:{DEFAULT_PORT}"


@dataclass(frozen=True)
class RunningChain:
    pid: int
    port: int
    chain_id: int
    block_time_s: float | None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


def running_chain(state_dir: Path = DEFAULT_STATE_DIR) -> RunningChain | None:
    """The chain `settle chain up` started, if it still answers; None otherwise."""
    chain = read_state(state_dir)
    if chain is None or not is_alive(chain):
        return None
    return chain


def is_alive(chain: RunningChain) -> bool:
    """Whether the recorded node is still up and answering as recorded."""
    return is_ours(chain) and probe_chain_id(chain.url) == chain.chain_id


def is_ours(chain: RunningChain) -> bool:
    """Whether the recorded pid is still the anvil `up` started (a hung one included)."""
    if not process_exists(chain.pid):
        return False
    try:
        return b"anvil" in Path(f"/proc/{chain.pid}/cmdline").read_bytes()
    except OSError:
        if Path("/proc/self").exists():
            return False  # it exited just now, or is not ours to read
    # No /proc (macOS): only an answer with the recorded chain id identifies it.
    return probe_chain_id(chain.url) == chain.chain_id


def process_exists(pid: int) -> bool:
    # A child of this process (when `up` ran in it, as in tests) lingers as a zombie until
    # reaped; reap it here so it counts as gone.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        if reaped == pid:
            return False
    except ChildProcessError:
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def state_path(state_dir: Path) -> Path:
    return state_dir / STATE_FILE_NAME


def read_state(state_dir: Path) -> RunningChain | None:
    try:
        data = json.loads(state_path(state_dir).read_text(encoding="utf-8"))
        return RunningChain(
            pid=int(data["pid"]),
            port=int(data["port"]),
            chain_id=int(data["chain_id"]),
            block_time_s=None if data["block_time_s"] is None else float(data["block_time_s"]),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError):
        # Unreadable: treat as no chain. `up` replaces it; the node it described, if any,
        # cannot be identified safely, so it is left alone.
        return None
