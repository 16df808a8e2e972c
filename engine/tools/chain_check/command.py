"""`settle chain-check --network anvil`: which networks the chain check runs on (it injects
faults through a proxy in front of a node it starts, so only a local anvil will do)."""

from __future__ import annotations

from engine.chain.networks import get_network
from engine.tools.chain_check.errors import ChainCheckNeedsAnvil


def require_anvil(network: str) -> None:
    """Refuses every network but anvil (unknown names raise UnknownNetwork)."""
    chosen = get_network(network)
    if chosen.name != "anvil":
        raise ChainCheckNeedsAnvil(chosen.name)
