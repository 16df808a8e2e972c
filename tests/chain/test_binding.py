"""The database remembers its chain (id, genesis hash) and escrow, and the engine refuses any
other chain: on SQLite and on PostgreSQL."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account import Account
from sqlalchemy import update
from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint

from engine.chain.backends.anvil import AnvilConfig, AnvilProcess
from engine.chain.binding import (
    ChainMismatch,
    ChainUnbound,
    bind,
    check_binding,
)
from engine.store.chain_binding import read_binding
from engine.store.db import Database
from engine.store.schema import chain_binding

pytestmark = pytest.mark.anvil

NOW = 1_700_000_000
ESCROW = Web3.to_checksum_address("0x" + "5e" * 20)
OTHER_ESCROW = Web3.to_checksum_address("0x" + "0e" * 20)


def start_chain(binary: Path, chain_id: int = 31337) -> tuple[AnvilProcess, Web3]:
    node = AnvilProcess(AnvilConfig(chain_id=chain_id, accounts_count=1), binary=binary)
    node.start()
    w3 = Web3(HTTPProvider(node.url))
    # Any code stands in for the escrow: binding checks that the code is there, not what it is.
    for address in (ESCROW, OTHER_ESCROW):
        w3.manager.request_blocking(RPCEndpoint("anvil_setCode"), [address, "0x6000"])
    return node, w3


@pytest.fixture
def w3(anvil_binary: Path) -> Iterator[Web3]:
    node, w3 = start_chain(anvil_binary)
    yield w3
    node.stop()


def test_bind_records_chain_id_genesis_hash_and_escrow(database: Database, w3: Web3) -> None:
    binding = bind(database, w3, ESCROW.lower(), now=NOW)

    assert binding == read_binding(database)
    assert binding.chain_id == 31337
    assert binding.genesis_hash == bytes(w3.eth.get_block(0)["hash"])
    assert binding.escrow_address == ESCROW
    assert binding.created_at == NOW
    assert check_binding(database, w3) == binding


def test_bind_again_to_the_same_chain_and_escrow_is_a_no_op(database: Database, w3: Web3) -> None:
    first = bind(database, w3, ESCROW, now=NOW)

    again = bind(database, w3, ESCROW, now=NOW + 60)

    assert again == first == read_binding(database)


def test_bind_to_another_escrow_is_refused_and_keeps_the_first(
    database: Database, w3: Web3
) -> None:
    first = bind(database, w3, ESCROW, now=NOW)

    with pytest.raises(ChainMismatch) as raised:
        bind(database, w3, OTHER_ESCROW, now=NOW)

    assert raised.value.code == "chain_mismatch"
    assert ESCROW in str(raised.value) and OTHER_ESCROW in str(raised.value)
    assert read_binding(database) == first


def test_bind_to_an_address_without_code_is_refused(database: Database, w3: Web3) -> None:
    with pytest.raises(ChainMismatch, match="no contract at"):
        bind(database, w3, Account.create().address, now=NOW)

    assert read_binding(database) is None


def test_check_on_an_unbound_database_is_refused(database: Database, w3: Web3) -> None:
    with pytest.raises(ChainUnbound) as raised:
        check_binding(database, w3)

    assert raised.value.code == "chain_unbound"


def test_check_against_another_chain_id_is_refused(
    database: Database, w3: Web3, anvil_binary: Path
) -> None:
    bind(database, w3, ESCROW, now=NOW)
    node, sepolia = start_chain(anvil_binary, chain_id=11155111)
    try:
        with pytest.raises(ChainMismatch, match="serves chain id 11155111") as raised:
            check_binding(database, sepolia)
    finally:
        node.stop()

    assert "belongs to chain id 31337" in str(raised.value)


def test_check_against_a_chain_with_another_genesis_is_refused(
    database: Database, w3: Web3
) -> None:
    bind(database, w3, ESCROW, now=NOW)
    # As if the database had been bound to an earlier run of this chain: a restarted anvil
    # keeps its chain id but starts from a new genesis block.
    with database.transaction() as conn:
        conn.execute(update(chain_binding).values(genesis_hash=b"\x01" * 32))

    with pytest.raises(ChainMismatch, match="another genesis block") as raised:
        check_binding(database, w3)

    assert "the chain was reset" in str(raised.value)


def test_check_against_a_chain_that_lost_the_escrow_is_refused(
    database: Database, w3: Web3
) -> None:
    bind(database, w3, ESCROW, now=NOW)
    w3.manager.request_blocking(RPCEndpoint("anvil_setCode"), [ESCROW, "0x"])

    with pytest.raises(ChainMismatch, match=f"no contract at the escrow {ESCROW}"):
        check_binding(database, w3)
