"""Reaching the chain a command reads: `--network NAME [--rpc-url URL]`, or a bare RPC URL.

A network's URL comes from the composition root's one rule (`rpc_url_for`); `embedded` is the
chain `settle demo` keeps beside its SQLite database, reopened in this process.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from web3 import Web3

from engine.chain.backends import EmbeddedBackend
from engine.chain.backends.embedded_state import state_path_for
from engine.chain.networks import get_network
from engine.cli.errors import EmbeddedStateMissing
from engine.deploy.rpc_connection import check_chain, connect, rpc_errors
from engine.pipeline.composition import rpc_url_for


@contextmanager
def connected_chain(network: str | None, rpc_url: str | None, db_url: str) -> Iterator[Web3]:
    """A Web3 on the chain, which has answered once. `embedded` reopens the chain kept beside
    the SQLite database (as `settle demo` leaves it); other networks go through their RPC URL
    (`--rpc-url`, else the preset's default), whose chain id is checked against the preset.
    Without a network, `rpc_url` is used as given. Transport failures inside the block become
    RpcUnreachable."""
    preset = None if network is None else get_network(network)
    if preset is not None and preset.name == "embedded":
        path = state_path_for(db_url)
        if not path.is_file():
            raise EmbeddedStateMissing(
                f"no embedded chain at {path}: --network embedded reopens the chain that "
                "`settle demo` keeps beside its SQLite database; pass that database's --db"
            )
        backend = EmbeddedBackend(path)
        try:
            yield backend.w3
        finally:
            backend.close()
        return
    if preset is not None:
        rpc_url = rpc_url or rpc_url_for(preset)
    assert rpc_url is not None, "callers ask for a URL when they have no network"
    with rpc_errors(rpc_url):
        w3 = connect(rpc_url)
        if preset is not None and preset.name != "anvil":  # anvil serves any chain id
            check_chain(w3, preset)
        yield w3
