"""The embedded EVM kept in a file: a new backend on the same file finds the escrow's payments."""

from __future__ import annotations

from pathlib import Path

from engine.chain.backends import EmbeddedBackend
from engine.chain.backends.embedded_state import state_path_for
from engine.chain.contracts.escrow import Signer, terms_tuple
from engine.tools.localnet import UNIT, deploy_local


def test_restarted_embedded_chain_keeps_escrow_payments_and_nonces(tmp_path: Path) -> None:
    path = tmp_path / "settle.db.evm.sqlite"
    first = EmbeddedBackend(path)
    world = deploy_local(first)
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    world.operator.send(world.escrow.functions.capture(terms_tuple(terms), 1, 30 * UNIT, 100, []))
    head = first.w3.eth.block_number
    escrow, token = world.escrow.address, world.token.address
    first.close()

    second = EmbeddedBackend(path)
    try:
        assert second.w3.eth.block_number == head
        escrow_again = second.w3.eth.contract(address=escrow, abi=world.escrow.abi)
        payment = escrow_again.functions.payments(world.payment_hash(terms)).call()
        assert list(payment) == [70 * UNIT, 30 * UNIT, 2]
        token_again = second.w3.eth.contract(address=token, abi=world.token.abi)
        assert token_again.functions.balanceOf(escrow).call() == 70 * UNIT
        # The chain goes on: the operator's next transaction uses the next nonce.
        operator = Signer(second.w3, world.operator.account)
        operator.send(escrow_again.functions.void(terms_tuple(terms), 2, 70 * UNIT))
        assert escrow_again.functions.payments(world.payment_hash(terms)).call()[0] == 0
    finally:
        second.close()


def test_in_memory_embedded_chain_starts_from_genesis_every_time(tmp_path: Path) -> None:
    world = deploy_local(EmbeddedBackend())
    fresh = EmbeddedBackend()
    assert fresh.w3.eth.get_code(world.escrow.address) == b""


def test_state_lives_beside_a_sqlite_database_else_in_var() -> None:
    assert state_path_for("sqlite:///var/settle.db") == Path("var/settle.db.evm.sqlite")
    assert state_path_for("postgresql://postgres@127.0.0.1/test") == Path("var/embedded-evm.sqlite")
