"""Which chain and escrow a database belongs to, and the check that the engine is talking to
that chain before it does anything.

The chain id alone cannot tell a restarted anvil (or a reset devnet) from the one the
database saw: both say 31337. The genesis block's hash can, since a new chain has a new
genesis. The escrow's code must still be there too: a chain that lost it would make every
payment the database knows look unknown to the chain.
"""

from __future__ import annotations

from eth_utils import to_checksum_address
from web3 import Web3

from engine.chain.errors import ChainError
from engine.store.chain_binding import ChainBinding, bind_once, read_binding
from engine.store.db import Database


class ChainMismatch(ChainError):
    """The chain behind the RPC URL is not the one the database is bound to."""

    code = "chain_mismatch"


class ChainUnbound(ChainError):
    """The database is bound to no chain yet."""

    code = "chain_unbound"


def bind(db: Database, w3: Web3, escrow_address: str, *, now: int) -> ChainBinding:
    """Binds the database to the chain behind `w3` and its escrow; a no-op when it already is
    bound to exactly that, ChainMismatch when it is bound to anything else (a database never
    moves between chains: its payments exist on one)."""
    escrow = to_checksum_address(escrow_address)
    chain_id, genesis_hash = _identify(w3)
    if not w3.eth.get_code(escrow):
        raise ChainMismatch(
            f"no contract at {escrow} on chain id {chain_id}: deploy the escrow first "
            "(`settle deploy`) and bind to the address it reports"
        )
    wanted = ChainBinding(chain_id, genesis_hash, escrow, now)
    existing = bind_once(db, wanted)
    if _same_target(existing, wanted):
        return existing
    raise ChainMismatch(
        f"this database is bound to {existing.describe()}, not to {wanted.describe()}: "
        "use a fresh database for another chain or escrow"
    )


def check_binding(db: Database, w3: Web3) -> ChainBinding:
    """The binding, once the chain behind `w3` is proven to be the bound one with its escrow."""
    binding = read_binding(db)
    if binding is None:
        raise ChainUnbound(
            "this database is bound to no chain yet: deploy the escrow (`settle deploy`) "
            "and bind the database to it"
        )
    chain_id, genesis_hash = _identify(w3)
    if chain_id != binding.chain_id:
        raise ChainMismatch(
            f"the RPC serves chain id {chain_id}, but this database belongs to chain id "
            f"{binding.chain_id}: point the engine at that chain's RPC URL"
        )
    if genesis_hash != binding.genesis_hash:
        raise ChainMismatch(
            f"the RPC serves chain id {chain_id} with another genesis block "
            f"(0x{genesis_hash.hex()[:12]}…, the database's is "
            f"0x{binding.genesis_hash.hex()[:12]}…): the chain was reset, as a restarted "
            "anvil is; its payments are gone, so use a fresh database"
        )
    if not w3.eth.get_code(to_checksum_address(binding.escrow_address)):
        raise ChainMismatch(
            f"no contract at the escrow {binding.escrow_address} on chain id {chain_id}: the "
            "node has not synced that far, or it lost its state"
        )
    return binding


def _identify(w3: Web3) -> tuple[int, bytes]:
    return w3.eth.chain_id, bytes(w3.eth.get_block(0)["hash"])


def _same_target(a: ChainBinding, b: ChainBinding) -> bool:
    return (a.chain_id, a.genesis_hash, a.escrow_address) == (
        b.chain_id,
        b.genesis_hash,
        b.escrow_address,
    )
