"""The happy path of one payment, on both EVMs: authorize, capture in two parts, refund."""

from engine.chain.escrow import terms_tuple
from engine.chain.localnet import UNIT, LocalDeployment


def test_authorize_capture_refund_moves_every_leg(world: LocalDeployment) -> None:
    terms = world.terms(100 * UNIT)
    payer_before = world.balance(world.payer.address)
    world.authorize(terms)
    assert world.state(terms) == (100 * UNIT, 0, 1)
    assert world.balance(world.escrow.address) == 100 * UNIT

    world.operator.send(world.escrow.functions.capture(terms_tuple(terms), 1, 40 * UNIT, 100, []))
    assert world.state(terms) == (60 * UNIT, 40 * UNIT, 2)
    assert world.balance(world.fee_receiver.address) - 1_000_000 * UNIT == 400_000
    world.operator.send(world.escrow.functions.refund(terms_tuple(terms), 2, 10 * UNIT, False))
    assert world.state(terms) == (60 * UNIT, 30 * UNIT, 3)
    assert world.balance(world.payer.address) == payer_before - 90 * UNIT
