"""Presets for the chains the engine runs on: ids, default finality depth, where the URL lives.

Confirmation depths count the blocks that must be built on top of the block holding a log
before the engine treats that log as final (0 = final as soon as it is mined).

* Local chains (embedded, anvil) have no reorgs unless a test makes one, so 0; a reorg test
  sets its own depth explicitly.
* Ethereum testnets (Sepolia, Hoodi) are proof of stake with 12 s slots. Reorgs deeper than
  one or two blocks are rare but happen around missed slots; 5 blocks (~1 minute) covers
  them without waiting for full finality (~2 epochs, ~13 minutes).
* OP-stack L2s (Base Sepolia, OP Sepolia) have 2 s blocks from a single sequencer; their
  unsafe head reorgs only when the sequencer restarts or its batch fails to land on L1, and
  then it reorgs regardless of depth. A few blocks (~6 s) absorb sequencer hiccups and
  load-balanced RPC nodes that briefly disagree about the head.
* Arbitrum has ~0.25 s blocks, so the same ~5 s of cover takes 20 blocks.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType

from engine.chain.errors import UnknownNetwork

# How long a sent transaction may wait unmined on a healthy node before the transaction manager
# calls it stuck and replaces it with a fee bump. A public mempool can hold a fairly priced
# transaction for several blocks when demand spikes; a local node mines on arrival (or every
# block_time_s), so one left in its pool is a node hiccup, not a market (anvil, given a JSON-RPC
# batch of sends, once mined all but the last, and nothing after it, until the bump replaced it).
STUCK_AFTER_S_PUBLIC = 60
STUCK_AFTER_S_LOCAL = 3

# eth-tester's py-evm chain id (eth_tester.backends.pyevm.main.setup_tester_chain).
EMBEDDED_CHAIN_ID = 131277322940537
ANVIL_CHAIN_ID = 31337


@dataclass(frozen=True)
class Network:
    name: str
    chain_id: int
    confirmations_default: int
    is_local: bool
    # Environment variable holding the RPC URL; None for local chains, which the engine starts.
    rpc_env_var: str | None

    def __post_init__(self) -> None:
        assert self.chain_id > 0, self
        assert self.confirmations_default >= 0, self
        assert self.is_local == (self.rpc_env_var is None), self


_PRESETS = (
    Network("embedded", EMBEDDED_CHAIN_ID, 0, is_local=True, rpc_env_var=None),
    Network("anvil", ANVIL_CHAIN_ID, 0, is_local=True, rpc_env_var=None),
    Network("sepolia", 11155111, 5, is_local=False, rpc_env_var="SEPOLIA_RPC_URL"),
    Network("hoodi", 560048, 5, is_local=False, rpc_env_var="HOODI_RPC_URL"),
    Network("base-sepolia", 84532, 3, is_local=False, rpc_env_var="BASE_SEPOLIA_RPC_URL"),
    Network("op-sepolia", 11155420, 3, is_local=False, rpc_env_var="OP_SEPOLIA_RPC_URL"),
    Network("arbitrum-sepolia", 421614, 20, is_local=False, rpc_env_var="ARBITRUM_SEPOLIA_RPC_URL"),
)

NETWORKS: Mapping[str, Network] = MappingProxyType({n.name: n for n in _PRESETS})

# Two presets sharing a name or chain id would let a signed transaction be replayed on the
# wrong chain by configuration alone.
assert len(NETWORKS) == len(_PRESETS)
assert len({n.chain_id for n in _PRESETS}) == len(_PRESETS)


def get_network(name: str) -> Network:
    try:
        return NETWORKS[name]
    except KeyError:
        raise UnknownNetwork(name, NETWORKS) from None
