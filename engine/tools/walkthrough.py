"""`settle demo`: one payment through the escrow on the embedded EVM, step by step.

Authorize a hold, capture part of it, capture the rest, refund part: after each step the
payment's on-chain state and every party's balance, so a newcomer sees money move.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from engine.chain.backends import EmbeddedBackend
from engine.chain.contracts.escrow import terms_tuple
from engine.domain.money import Asset
from engine.tools.localnet import UNIT, LocalDeployment, deploy_local

HOLD: Final = 100 * UNIT
FIRST_CAPTURE: Final = 30 * UNIT
REFUND: Final = 20 * UNIT
FEE_BPS: Final = 100
ASSET: Final = Asset(symbol="TUSD", token=None, decimals=6)


@dataclass(frozen=True)
class Step:
    """What one operation did: its gas, the payment afterwards, and every balance."""

    name: str
    gas_used: int
    capturable: int
    refundable: int
    seq: int
    balances: dict[str, int]

    def to_dict(self) -> dict[str, object]:
        return {
            "step": self.name,
            "gas_used": self.gas_used,
            "payment": {
                "capturable": self.capturable,
                "refundable": self.refundable,
                "seq": self.seq,
            },
            "balances": self.balances,
        }


def run(on_step: Callable[[Step], None] = lambda _: None) -> list[Step]:
    """Walks the payment and returns its steps; `on_step` sees each as it happens."""
    backend = EmbeddedBackend()
    try:
        world = deploy_local(backend)
        return _walk(world, on_step)
    finally:
        backend.close()


def _walk(world: LocalDeployment, on_step: Callable[[Step], None]) -> list[Step]:
    escrow, operator = world.escrow, world.operator
    terms = world.terms(HOLD)
    start = {name: world.balance(address) for name, address in world.parties.items()}
    steps: list[Step] = []

    def record(name: str, gas_used: int) -> None:
        capturable, refundable, seq = world.state(terms)
        balances = {
            name: world.balance(address) - start[name] for name, address in world.parties.items()
        }
        step = Step(name, gas_used, capturable, refundable, seq, balances)
        steps.append(step)
        on_step(step)

    fmt = ASSET.format_amount
    record(f"authorize {fmt(HOLD)} (hold)", world.authorize(terms)["gasUsed"])
    args = terms_tuple(terms)
    receipt = operator.send(escrow.functions.capture(args, 1, FIRST_CAPTURE, FEE_BPS, []))
    record(f"capture {fmt(FIRST_CAPTURE)} (partial, 1% fee)", receipt["gasUsed"])
    rest = world.state(terms)[0]
    receipt = operator.send(escrow.functions.capture(args, 2, rest, FEE_BPS, []))
    record(f"capture {fmt(rest)} (the rest)", receipt["gasUsed"])
    receipt = operator.send(escrow.functions.refund(args, 3, REFUND, False))
    record(f"refund {fmt(REFUND)} (partial, operator-funded)", receipt["gasUsed"])
    return steps
