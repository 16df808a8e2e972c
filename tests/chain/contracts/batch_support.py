"""What the batch, event, hostile-token and stateful escrow tests share: a funded extra token,
a payment on hold, settling a batch, the contract's fee rounding, and the payouts a receipt
shows."""

from __future__ import annotations

from collections.abc import Sequence

from hexbytes import HexBytes
from web3.contract import Contract
from web3.types import TxReceipt

from engine.chain.contracts.escrow import BatchOp, encode_batch
from engine.domain.ids import PaymentTerms
from engine.tools.localnet import MINT_PER_ACCOUNT, UINT256_MAX, UNIT, LocalDeployment


def payouts(
    world: LocalDeployment, receipt: TxReceipt, token: Contract | None = None
) -> list[tuple[str, int]]:
    """(recipient, amount) of every transfer of `token` (default: the stablecoin) out of the
    escrow in `receipt`. Filtered by emitter: every token's Transfer event looks the same."""
    token = token or world.token
    transfer = token.events.Transfer()
    topic = HexBytes(transfer.topic)
    found = (
        transfer.process_log(log)["args"]
        for log in receipt["logs"]
        if log["address"].lower() == token.address.lower() and log["topics"][0] == topic
    )
    return [(t["to"], t["value"]) for t in found if t["from"] == world.escrow.address]


def deploy_funded_token(world: LocalDeployment, artifact: str) -> Contract:
    """A test token minted to everyone who funds holds, refunds or disputes, each of whom
    approves the escrow, as deploy_local does for the stablecoin."""
    token = world.admin.deploy(artifact)
    funders = (world.payer, world.operator, world.merchant, world.arbiter)
    for signer in funders:
        world.admin.send(token.functions.mint(signer.address, MINT_PER_ACCOUNT))
    for signer in funders:
        signer.send(token.functions.approve(world.escrow.address, UINT256_MAX))
    return token


def settle(world: LocalDeployment, ops: Sequence[BatchOp] | bytes, *, atomic: bool) -> TxReceipt:
    """Sends a batch as the operator; `ops` as bytes is sent as packed, broken or not."""
    packed = ops if isinstance(ops, bytes) else encode_batch(ops)
    return world.operator.send(world.escrow.functions.settleBatch(packed, atomic))


def fee(amount: int, bps: int) -> int:
    """The contract's fee: rounded up, so a non-zero fee never rounds away."""
    return -(-amount * bps // 10_000)


def held(world: LocalDeployment, amount: int = 100 * UNIT) -> PaymentTerms:
    terms = world.terms(amount)
    world.authorize(terms)
    return terms
