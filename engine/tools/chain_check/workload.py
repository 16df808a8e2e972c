"""What the chain check sends: payments, each an authorize and, once the manager has
confirmed the hold, a capture of all of it. Each operation is one escrow transaction with its
own idempotency key, sent by the manager from one of LANES operator lanes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3.contract import Contract

from engine.chain.contracts.escrow import Method, terms_tuple
from engine.chain.rpc import data
from engine.chain.txmanager.manager import TxRequest
from engine.tools.localnet import ACCOUNTS_NEEDED, DEFAULT_MAX_FEE_BPS, UNIT, LocalDeployment

OPERATIONS_DEFAULT: Final = 300
OPERATIONS_MIN: Final = 2
OPERATIONS_MAX: Final = 5_000
LANES: Final = 2
AMOUNT_UNITS_MAX: Final = 9


@dataclass(frozen=True)
class Operation:
    kind: str  # "authorize" or "capture": the escrow event that shows it applied
    payment_id: bytes
    request: TxRequest

    @property
    def key(self) -> str:
        return self.request.idempotency_key


@dataclass(frozen=True)
class Payment:
    authorize: Operation
    capture: Operation | None  # None: an odd operation count leaves the last hold open


def operator_lanes(world: LocalDeployment) -> list[LocalAccount]:
    """The deployment's operator plus funded accounts it does not use, given the operator role."""
    extra = world.backend.accounts()[ACCOUNTS_NEEDED : ACCOUNTS_NEEDED + LANES - 1]
    assert len(extra) == LANES - 1, "anvil has too few accounts for the lanes"
    role = world.escrow.functions.OPERATOR_ROLE().call()
    for account in extra:
        world.admin.send(world.escrow.functions.grantRole(role, account.address))
    return [world.operator.account, *extra]


def plan_payments(
    world: LocalDeployment, lanes: Sequence[LocalAccount], operations: int, seed: int
) -> list[Payment]:
    """`operations` operations as payments, the lanes taking turns; an odd count leaves the
    last hold uncaptured."""
    payments = []
    for index in range((operations + 1) // 2):
        lane = lanes[index % len(lanes)].address
        amount = (1 + index % AMOUNT_UNITS_MAX) * UNIT
        terms = world.terms(amount, operator=lane)
        payment_id = world.payment_hash(terms)
        key_prefix = f"chain-check-{seed}-{index}"
        args = [terms_tuple(terms), amount, Method.ALLOWANCE, world.payer_signature(terms)]
        authorize = _operation(world.escrow, "authorize", args, payment_id, key_prefix, lane)
        capture = None
        if 2 * index + 1 < operations:
            fee_bps = index % (DEFAULT_MAX_FEE_BPS + 1)
            args = [terms_tuple(terms), 1, amount, fee_bps, []]
            capture = _operation(world.escrow, "capture", args, payment_id, key_prefix, lane)
        payments.append(Payment(authorize, capture))
    return payments


def _operation(
    escrow: Contract,
    kind: str,
    args: list[Any],
    payment_id: bytes,
    key_prefix: str,
    lane: ChecksumAddress,
) -> Operation:
    """The escrow call `kind` as a request of its own lane, keyed by payment and kind."""
    calldata = data(escrow.encode_abi(kind, args=args))
    request = TxRequest(escrow.address, calldata, f"{key_prefix}-{kind}", lane=lane)
    return Operation(kind, payment_id, request)
