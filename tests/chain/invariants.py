"""What every escrow contract test checks besides its own assertions.

* Money is conserved: a movement only shifts tokens between known parties (`Balances`).
* A reverted call is caught before anything is mined (`reverts_with`).
* The escrow is solvent: its token balance is exactly what it owes, i.e. Σ capturable +
  Σ frozen by open disputes + Σ credits (`assert_solvent`).

It also holds the one starting state several modules share: a fully captured payment.

The escrow state is discovered from its own logs since genesis. That is sound because the
`world` fixture reverts the chain to the just-deployed escrow after every test, so every log
seen belongs to the running test.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
from web3.logs import DISCARD
from web3.types import TxReceipt

from engine.chain.escrow import ContractReverted, Method, bind, terms_tuple
from engine.chain.localnet import STABLECOIN_NAME, UNIT, LocalDeployment
from engine.domain.ids import PaymentTerms

# Everyone who pays or is paid in these tests. The admin and the pauser never are, and the
# conservation check in `moved` would expose a payment to them as tokens that vanished.
PARTY_NAMES = ("payer", "merchant", "fee_receiver", "operator", "arbiter", "other")


class Balances:
    """Token balances of every account a test can pay, read again after each movement.

    Pass every extra recipient (e.g. a leg's ledger account) by name: an unknown recipient
    shows up as tokens that vanished."""

    def __init__(self, world: LocalDeployment, **extra: str) -> None:
        self._world = world
        self._parties = {name: getattr(world, name).address for name in PARTY_NAMES}
        self._parties["escrow"] = world.escrow.address
        self._parties.update(extra)
        self._last = self._read()

    def _read(self) -> dict[str, int]:
        return {name: self._world.balance(address) for name, address in self._parties.items()}

    def moved(self) -> dict[str, int]:
        """The non-zero balance changes by party since the last look; asserts none leaked."""
        now = self._read()
        changes = {
            name: now[name] - self._last[name] for name in now if now[name] != self._last[name]
        }
        self._last = now
        assert sum(changes.values()) == 0, f"tokens appeared or vanished: {changes}"
        return changes


def emitted(world: LocalDeployment, receipt: TxReceipt, event: str) -> list[dict[str, Any]]:
    """The arguments of each `event` the escrow emitted in the transaction, in log order."""
    logs = world.escrow.events[event]().process_receipt(receipt, errors=DISCARD)
    return [dict(log["args"]) for log in logs]


def _payment_ids(world: LocalDeployment) -> dict[bytes, str]:
    """Every payment the escrow ever held, with its token."""
    logs = world.escrow.events.Authorized().get_logs(from_block=0)
    return {log["args"]["paymentId"]: log["args"]["terms"]["token"] for log in logs}


def assert_solvent(world: LocalDeployment) -> None:
    """token.balanceOf(escrow) == Σ capturable + Σ open dispute amounts + Σ credits, per token."""
    escrow = world.escrow.functions
    owed: Counter[str] = Counter({world.token.address: 0})
    for payment_id, token in _payment_ids(world).items():
        capturable, _, _ = escrow.payments(payment_id).call()
        frozen, _ = escrow.disputes(payment_id).call()
        owed[token] += capturable + frozen
    credited = {
        (log["args"]["token"], log["args"]["account"])
        for log in world.escrow.events.Credited().get_logs(from_block=0)
    }
    for token, account in credited:
        owed[token] += escrow.credits(token, account).call()
    for token, amount in owed.items():
        held = world.balance(world.escrow.address, bind(world.backend.w3, STABLECOIN_NAME, token))
        assert held == amount, f"escrow holds {held} of {token} but owes {amount}"


@contextmanager
def reverts_with(world: LocalDeployment, error: str, **args: Any) -> Iterator[None]:
    """Expects the block to revert with the custom `error` (and these of its arguments).

    The signer simulates before it sends, so a revert is caught before anything is mined: the
    chain must not have moved, which is what guarantees that no balance, payment or dispute
    changed (checking them one by one would only re-read the same block)."""
    block = world.backend.w3.eth.block_number
    with pytest.raises(ContractReverted) as caught:
        yield
    assert caught.value.error == error, f"expected {error}, got {caught.value}"
    assert {name: caught.value.args_by_name.get(name) for name in args} == args, caught.value
    assert world.backend.w3.eth.block_number == block


def captured(world: LocalDeployment, amount: int = 100 * UNIT) -> PaymentTerms:
    """A payment charged in full without fee (seq 2), so all of `amount` is refundable."""
    terms = world.terms(amount)
    signature = world.payer_signature(terms)
    call = world.escrow.functions.charge(
        terms_tuple(terms), amount, Method.ALLOWANCE, signature, 0, []
    )
    world.operator.send(call)
    return terms
