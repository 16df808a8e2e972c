"""Reaching the node `settle deploy` talks to: which URL, whether it answers, whether it is
the chain named, and how to say so without leaking the API key a hosted RPC URL carries."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Final

import requests
from web3 import HTTPProvider, Web3

from engine.chain.errors import ChainIdMismatch
from engine.chain.networks import Network
from engine.deploy.errors import RpcUnreachable
from engine.store.redaction import redact_url

RPC_TIMEOUT_S: Final = 30


@contextmanager
def rpc_errors(url: str) -> Iterator[None]:
    """Turns transport failures while talking to `url` into one RpcUnreachable line."""
    try:
        yield
    except requests.Timeout:
        reason = "no answer in time"
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else "error"
        reason = f"HTTP {status}"
    except requests.ConnectionError as error:
        reason = "connection refused" if "refused" in str(error).lower() else "cannot connect"
    else:
        return
    raise RpcUnreachable(
        f"the RPC at {redact_url(url)} is not answering ({reason}): start the node "
        "(`settle chain up` for anvil) or pass the right --rpc-url"
    )


def connect(url: str, timeout_s: float = RPC_TIMEOUT_S) -> Web3:
    """A Web3 over HTTP whose node has answered once."""
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": timeout_s}))
    with rpc_errors(url):
        w3.eth.get_block_number()
    return w3


def check_chain(w3: Web3, network: Network) -> None:
    """Refuses a node of another chain before anything is signed for it."""
    chain_id = w3.eth.chain_id
    if chain_id != network.chain_id:
        raise ChainIdMismatch(network.name, network.chain_id, chain_id)
