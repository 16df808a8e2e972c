"""EIP-1559 fee policy: what to offer for a new transaction and for a replacement of a stuck one.

Pure arithmetic on ints of wei; the manager feeds it the chain's base fee and suggested tip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from engine.chain.errors import FeeCapTooLow
from engine.store.transactions import Fees

# Nodes accept a replacement (same sender and nonce) only if it raises both the max fee and
# the tip by a minimum step: geth's txpool default is 10 %, other clients use 12.5 %; 12.5 %
# satisfies both.
FEE_BUMP_PERMILLE_MIN: Final = 125
PERMILLE: Final = 1000


@dataclass(frozen=True)
class FeePolicy:
    # Never offer more than this per gas, whatever the chain asks: a runaway base fee must
    # stall the queue (and page someone), not drain the signer.
    max_fee_per_gas_cap: int
    # None: take the node's eth_maxPriorityFeePerGas.
    priority_fee_per_gas: int | None = None
    # Max fee = base fee x this + tip: a base fee of 2x covers six full blocks in a row
    # (+12.5 % each) before the transaction is priced out.
    base_fee_multiplier: int = 2
    bump_permille: int = FEE_BUMP_PERMILLE_MIN

    def __post_init__(self) -> None:
        assert self.max_fee_per_gas_cap > 0, self
        assert self.priority_fee_per_gas is None or self.priority_fee_per_gas >= 0, self
        assert self.base_fee_multiplier >= 1, self
        assert self.bump_permille >= FEE_BUMP_PERMILLE_MIN, self

    def check_cap(self, base_fee_per_gas: int) -> None:
        """Refuses work that could not be mined at today's base fee even at the cap."""
        if self.max_fee_per_gas_cap < base_fee_per_gas:
            raise FeeCapTooLow(self.max_fee_per_gas_cap, base_fee_per_gas)

    def quote(self, base_fee_per_gas: int, suggested_tip_per_gas: int) -> Fees:
        """Fees for a first attempt at the current base fee."""
        tip = self.priority_fee_per_gas
        if tip is None:
            tip = suggested_tip_per_gas
        max_fee = min(self.max_fee_per_gas_cap, base_fee_per_gas * self.base_fee_multiplier + tip)
        return Fees(max_fee, min(tip, max_fee))

    def bump(self, previous: Fees, market: Fees) -> Fees | None:
        """Fees for a replacement of `previous`: at least the minimum step up on both fees and
        at least today's quote; None when the cap leaves no room for the step."""
        max_fee_min = _stepped(previous.max_fee_per_gas, self.bump_permille)
        tip_min = _stepped(previous.max_priority_fee_per_gas, self.bump_permille)
        if max_fee_min > self.max_fee_per_gas_cap or tip_min > max_fee_min:
            return None
        max_fee = min(self.max_fee_per_gas_cap, max(max_fee_min, market.max_fee_per_gas))
        tip = min(max_fee, max(tip_min, market.max_priority_fee_per_gas))
        return Fees(max_fee, tip)


def _stepped(wei: int, permille: int) -> int:
    """`wei` raised by `permille`, rounded up, and by at least 1 wei so that a zero fee rises."""
    return wei + max(1, -(-wei * permille // PERMILLE))
