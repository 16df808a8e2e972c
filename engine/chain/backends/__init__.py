"""One interface over the EVMs the engine talks to: embedded py-evm, anvil, any JSON-RPC URL.

Contract and engine tests run the same code against the embedded EVM (fast, in process) and
anvil (a real node over HTTP); production talks to an RPC URL, where the test-only controls
(time travel, snapshots, mining on demand) raise UnsupportedOnBackend.

Time travel semantics are the same on every local backend: ``set_next_block_timestamp``
fixes the timestamp of the next mined block exactly, and ``increase_time`` mines one block
exactly ``seconds`` after the latest. Blocks after that are at least as late (py-evm adds a
second per block, anvil may repeat a timestamp until the wall clock catches up).
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Literal, Self

from eth.vm.forks import CancunVM
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester import EthereumTester, PyEVMBackend
from web3 import EthereumTesterProvider, HTTPProvider, Web3
from web3.types import RPCEndpoint

from engine.chain.backends.anvil import AnvilConfig, AnvilProcess, anvil_accounts
from engine.chain.backends.embedded_state import DurableAtomicDB, WriteThroughKV
from engine.chain.errors import (
    ChainIdMismatch,
    SnapshotNotFound,
    TimestampNotIncreasing,
    UnsupportedOnBackend,
)
from engine.chain.networks import STUCK_AFTER_S_LOCAL, STUCK_AFTER_S_PUBLIC, Network
from engine.chain.rpc import Rpc, quantity, rpc_for

BackendName = Literal["embedded", "anvil", "rpc"]

MINE_BLOCKS_MAX = 10_000


class ChainBackend(ABC):
    """A connected chain. Chain control (time, snapshots, mining) is refused here and
    provided by LocalChainBackend, so a real network can never be steered by mistake."""

    name: ClassVar[BackendName]

    def __init__(self, w3: Web3, accounts: Sequence[LocalAccount]) -> None:
        self.w3 = w3
        # Raw JSON-RPC for what the engine reads every step (the chain's clock), beside web3.
        self.rpc: Rpc = rpc_for(w3)
        self._accounts = tuple(accounts)
        # Read once: a backend never changes chains, and callers sign with this id.
        self.chain_id: int = w3.eth.chain_id

    def accounts(self) -> list[LocalAccount]:
        """Funded accounts whose keys are known (local backends) or were given (rpc)."""
        return list(self._accounts)

    def stuck_after_s(self) -> int:
        """How long a sent transaction may sit unmined here before it counts as stuck."""
        return STUCK_AFTER_S_PUBLIC

    def now(self) -> int:
        """Timestamp of the latest block: the chain's clock, not the wall clock."""
        block = self.rpc.call("eth_getBlockByNumber", ["latest", False])
        return quantity(block["timestamp"])

    def set_next_block_timestamp(self, timestamp: int) -> None:
        raise UnsupportedOnBackend("set_next_block_timestamp", self.name)

    def mine(self, blocks: int = 1) -> None:
        raise UnsupportedOnBackend("mine", self.name)

    def increase_time(self, seconds: int) -> int:
        raise UnsupportedOnBackend("increase_time", self.name)

    def snapshot(self) -> str:
        raise UnsupportedOnBackend("snapshot", self.name)

    def revert(self, token: str) -> None:
        raise UnsupportedOnBackend("revert", self.name)

    @abstractmethod
    def close(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


class LocalChainBackend(ChainBackend):
    """A chain this process may steer; checks here, node-specific work in the hooks."""

    def __init__(self, w3: Web3, accounts: Sequence[LocalAccount]) -> None:
        super().__init__(w3, accounts)
        # Oldest first. Tracked here so every backend accepts and refuses the same tokens;
        # the nodes disagree (eth-tester keeps all, anvil answers false or an error).
        self._live_snapshots: list[str] = []

    def stuck_after_s(self) -> int:
        return STUCK_AFTER_S_LOCAL

    def set_next_block_timestamp(self, timestamp: int) -> None:
        latest = self.now()
        if timestamp <= latest:
            raise TimestampNotIncreasing(timestamp, latest)
        self._set_next_block_timestamp(timestamp)

    def mine(self, blocks: int = 1) -> None:
        assert 0 < blocks <= MINE_BLOCKS_MAX, blocks
        self._mine(blocks)

    def increase_time(self, seconds: int) -> int:
        """Mine one block `seconds` after the latest one; returns its timestamp."""
        timestamp = self.now() + seconds
        self.set_next_block_timestamp(timestamp)
        self.mine()
        return timestamp

    def snapshot(self) -> str:
        """A single-use token for revert()."""
        token = self._snapshot()
        self._live_snapshots.append(token)
        return token

    def revert(self, token: str) -> None:
        if token not in self._live_snapshots:
            raise SnapshotNotFound(token)
        # Snapshots taken after this one describe states that no longer exist.
        del self._live_snapshots[self._live_snapshots.index(token) :]
        self._revert(token)

    @abstractmethod
    def _set_next_block_timestamp(self, timestamp: int) -> None: ...

    @abstractmethod
    def _mine(self, blocks: int) -> None: ...

    @abstractmethod
    def _snapshot(self) -> str: ...

    @abstractmethod
    def _revert(self, token: str) -> None: ...


class EmbeddedBackend(LocalChainBackend):
    """eth-tester over py-evm in this process, pinned to Cancun like the compiled contracts."""

    name: ClassVar[BackendName] = "embedded"

    def __init__(self, state_path: Path | None = None) -> None:
        """In memory by default; with `state_path`, the chain is kept in that SQLite file and
        a new backend on the same file continues where the last one stopped."""
        # eth-tester defaults to its newest fork (Prague); the contracts target cancun.
        self._evm = PyEVMBackend(vm_configuration=((0, CancunVM),))
        self._kv: WriteThroughKV | None = None
        if state_path is not None:
            self._kv = WriteThroughKV(state_path)
            if len(self._kv) == 0:  # a new file: start from eth-tester's genesis
                genesis = self._evm.chain.chaindb.db
                for key in genesis.wrapped_db:
                    self._kv[key] = genesis[key]
                self._kv.flush()
            self._evm.chain = type(self._evm.chain)(DurableAtomicDB(self._kv))
        self._tester = EthereumTester(self._evm, auto_mine_transactions=True)
        accounts = [Account.from_key(key.to_bytes()) for key in self._evm.account_keys]
        super().__init__(Web3(EthereumTesterProvider(self._tester)), accounts)

    def close(self) -> None:
        """Flushes and closes the state file, if any; an in-memory chain just goes away."""
        if self._kv is not None:
            self._kv.close()
            self._kv = None

    def _set_next_block_timestamp(self, timestamp: int) -> None:
        # The pending header is the next block; eth-tester's own time_travel would mine an
        # extra block one second early, which anvil does not do.
        self._evm.chain.set_header_timestamp(timestamp)

    def _mine(self, blocks: int) -> None:
        self._tester.mine_blocks(blocks)

    def _snapshot(self) -> str:
        return str(self._tester.take_snapshot())

    def _revert(self, token: str) -> None:
        self._tester.revert_to_snapshot(int(token))


class AnvilBackend(LocalChainBackend):
    """An anvil node over HTTP; stops the node on close() only if it started it."""

    name: ClassVar[BackendName] = "anvil"

    def __init__(self, process: AnvilProcess, *, owns_process: bool = False) -> None:
        self.process = process
        self._owns_process = owns_process
        accounts = anvil_accounts(process.config.accounts_count)
        super().__init__(Web3(HTTPProvider(process.url)), accounts)

    @classmethod
    def launch(cls, config: AnvilConfig | None = None) -> AnvilBackend:
        process = AnvilProcess(config)
        process.start()
        try:
            return cls(process, owns_process=True)
        except BaseException:
            process.stop()
            raise

    def close(self) -> None:
        if self._owns_process:
            self.process.stop()

    def stuck_after_s(self) -> int:
        config = self.process.config
        if not config.automine:  # blocks come only when a test mines them
            return STUCK_AFTER_S_PUBLIC
        return STUCK_AFTER_S_LOCAL + math.ceil(config.block_time_s or 0)

    def _set_next_block_timestamp(self, timestamp: int) -> None:
        self._request("evm_setNextBlockTimestamp", timestamp)

    def _mine(self, blocks: int) -> None:
        # An interval of 1 s gives each block its own timestamp, as py-evm does; without it
        # anvil stamps a burst of blocks with the same second.
        self._request("anvil_mine", blocks, 1)

    def _snapshot(self) -> str:
        return str(self._request("evm_snapshot"))

    def _revert(self, token: str) -> None:
        # False: another client of the same node already reverted past this snapshot.
        if not self._request("evm_revert", token):
            raise SnapshotNotFound(token)

    def _request(self, method: str, *params: object) -> object:
        return self.w3.manager.request_blocking(RPCEndpoint(method), list(params))


class RpcBackend(ChainBackend):
    """Any JSON-RPC node (public testnets, a shared devnet): the chain is not ours to steer."""

    name: ClassVar[BackendName] = "rpc"

    def __init__(self, url: str, network: Network, accounts: Sequence[LocalAccount] = ()) -> None:
        super().__init__(Web3(HTTPProvider(url)), accounts)
        self.network = network
        if self.chain_id != network.chain_id:
            raise ChainIdMismatch(network.name, network.chain_id, self.chain_id)

    def close(self) -> None:
        """Nothing to release: HTTP sessions are pooled by web3 and end with the process."""
