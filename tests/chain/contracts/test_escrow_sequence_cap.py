"""A payment's operation sequence is a uint16: at its cap the operator is stopped
(SequenceExhausted), the payer not."""

from __future__ import annotations

import pytest
from eth_utils import keccak

from engine.chain.contracts.escrow import ContractReverted, terms_tuple
from engine.domain.ids import PaymentTerms
from engine.tools.localnet import UNIT, LocalDeployment

SEQ_MAX = 2**16 - 1
MAPPING_SLOTS_SCANNED = 16


def payment_slot(world: LocalDeployment, payment_hash: bytes) -> int:
    """The storage slot of a payment, found by scanning the mapping's base slots."""
    for base in range(MAPPING_SLOTS_SCANNED):
        slot = int.from_bytes(keccak(payment_hash + base.to_bytes(32, "big")), "big")
        if world.backend.w3.eth.get_storage_at(world.escrow.address, slot) != b"\x00" * 32:
            return slot
    raise AssertionError("payment slot not found")


@pytest.fixture
def capped(world: LocalDeployment) -> tuple[LocalDeployment, PaymentTerms]:
    if world.backend.name != "anvil":
        pytest.skip("writing storage directly needs anvil_setStorageAt")
    terms = world.terms(100 * UNIT)
    world.authorize(terms)
    slot = payment_slot(world, world.payment_hash(terms))
    packed = (100 * UNIT) | (SEQ_MAX << 240)
    world.backend.w3.provider.make_request(
        "anvil_setStorageAt",
        [world.escrow.address, hex(slot), "0x" + packed.to_bytes(32, "big").hex()],
    )
    assert world.state(terms) == (100 * UNIT, 0, SEQ_MAX)
    return world, terms


def test_operation_at_the_sequence_cap_reverts(
    capped: tuple[LocalDeployment, PaymentTerms],
) -> None:
    world, terms = capped
    with pytest.raises(ContractReverted) as revert:
        world.operator.send(world.escrow.functions.void(terms_tuple(terms), SEQ_MAX, UNIT))
    assert revert.value.error == "SequenceExhausted"  # named, not an arithmetic Panic
    assert revert.value.args_by_name == {"paymentId": world.payment_hash(terms)}


def test_payer_can_still_reclaim_at_the_sequence_cap(
    capped: tuple[LocalDeployment, PaymentTerms],
) -> None:
    world, terms = capped
    world.backend.set_next_block_timestamp(terms.authorization_expiry)
    world.backend.mine()
    payer_before = world.balance(world.payer.address)
    world.payer.send(world.escrow.functions.reclaim(terms_tuple(terms)))
    assert world.balance(world.payer.address) == payer_before + 100 * UNIT
    assert world.state(terms) == (0, 0, SEQ_MAX)
