"""A ready-to-use escrow deployment on a local chain: the demo, the gas report and the
contract tests all start from this one setup, so they measure and show the same thing.

The settlement engine never deploys and never mines; on a local chain this module hands it
both (``local_engine``): the deployment made here and the chain's miner as its block producer.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from eth_account.signers.local import LocalAccount
from web3.contract import Contract
from web3.types import TxReceipt

from engine.chain.backends import ChainBackend
from engine.chain.contracts.escrow import (
    ESCROW_NAME,
    ROLES,
    Method,
    Signer,
    sign_payment,
    terms_tuple,
)
from engine.chain.deployment import Deployment
from engine.domain.ids import PaymentTerms
from engine.pipeline.engine import ALL_ROLES, Role, SagaFactory, SettlementEngine, Signers

STABLECOIN_NAME: Final = "TestStablecoin"
UNIT: Final = 10**6  # the test stablecoin has 6 decimals, like USDC
MINT_PER_ACCOUNT: Final = 1_000_000 * UNIT
UINT256_MAX: Final = 2**256 - 1
ACCOUNTS_NEEDED: Final = 8
AUTHORIZATION_WINDOW_S: Final = 7 * 24 * 3600
REFUND_WINDOW_S: Final = 90 * 24 * 3600
DEFAULT_MAX_FEE_BPS: Final = 100
EMBEDDED_GAS_LIMIT: Final = 10_000_000


@dataclass
class LocalDeployment:
    """The escrow, a 6-decimal stablecoin and one account per role, all funded and approved."""

    backend: ChainBackend
    escrow: Contract
    token: Contract
    admin: Signer
    operator: Signer
    arbiter: Signer
    pauser: Signer
    payer: Signer
    merchant: Signer
    fee_receiver: Signer
    other: Signer
    _salt: int = 0

    @property
    def parties(self) -> dict[str, str]:
        """Every account that holds money in a payment, by role name."""
        return {
            "payer": self.payer.address,
            "merchant": self.merchant.address,
            "fee_receiver": self.fee_receiver.address,
            "operator": self.operator.address,
            "escrow": self.escrow.address,
        }

    @property
    def record(self) -> Deployment:
        """The deployment as a record would state it (the engine reads only that)."""
        return Deployment(
            chain_id=self.backend.chain_id,
            network=self.backend.name,
            escrow=self.escrow.address,
            operators=(self.operator.address,),
            arbiters=(self.arbiter.address,),
            pausers=(self.pauser.address,),
        )

    @property
    def signers(self) -> Signers:
        return Signers(self.operator.account, self.arbiter.account)

    def balance(self, address: str, token: Contract | None = None) -> int:
        return int((token or self.token).functions.balanceOf(address).call())

    def terms(self, amount: int = 100 * UNIT, **overrides: object) -> PaymentTerms:
        """Fresh terms (a new salt each call) between the deployment's parties."""
        self._salt += 1
        now = self.backend.now()
        terms = PaymentTerms(
            payer=self.payer.address,
            merchant=self.merchant.address,
            token=self.token.address,
            max_amount=amount,
            authorization_expiry=now + AUTHORIZATION_WINDOW_S,
            refund_expiry=now + REFUND_WINDOW_S,
            min_fee_bps=0,
            max_fee_bps=DEFAULT_MAX_FEE_BPS,
            fee_receiver=self.fee_receiver.address,
            operator=self.operator.address,
            salt=self._salt,
        )
        return replace(terms, **overrides)  # type: ignore[arg-type]

    def payment_hash(self, terms: PaymentTerms) -> bytes:
        return terms.payment_hash(self.backend.chain_id, self.escrow.address)

    def payer_signature(self, terms: PaymentTerms, payer: LocalAccount | None = None) -> bytes:
        return sign_payment(payer or self.payer.account, self.payment_hash(terms))

    def authorize(self, terms: PaymentTerms, amount: int | None = None) -> TxReceipt:
        """Hold `amount` (default: the max) by allowance, signed by the payer."""
        call = self.escrow.functions.authorize(
            terms_tuple(terms),
            terms.max_amount if amount is None else amount,
            Method.ALLOWANCE,
            self.payer_signature(terms),
        )
        return self.operator.send(call)

    def state(self, terms: PaymentTerms) -> tuple[int, int, int]:
        """(capturable, refundable, seq) of the payment on chain."""
        capturable, refundable, seq = self.escrow.functions.payments(
            self.payment_hash(terms)
        ).call()
        return int(capturable), int(refundable), int(seq)


def deploy_local(backend: ChainBackend) -> LocalDeployment:
    """Deploys escrow and stablecoin, grants roles, funds and approves every party."""
    signers = _signers(backend)
    admin, operator, arbiter, pauser, payer, merchant, fee_receiver, other = signers
    escrow = admin.deploy(ESCROW_NAME, admin.address)
    token = admin.deploy(STABLECOIN_NAME)
    for role, holder in zip(ROLES, (operator, arbiter, pauser), strict=True):
        role_id = getattr(escrow.functions, role)().call()
        admin.send(escrow.functions.grantRole(role_id, holder.address))
    for signer in signers:
        admin.send(token.functions.mint(signer.address, MINT_PER_ACCOUNT))
    # Payers fund holds, operators and merchants fund refunds and disputes.
    for signer in (payer, operator, merchant, arbiter):
        signer.send(token.functions.approve(escrow.address, UINT256_MAX))
    # The merchant lets the operator and the arbiter fund refunds and disputes from it, uncapped
    # (the escrow still bounds each payment's merchant funding by the merchant's net of it).
    for spender in (operator, arbiter):
        merchant.send(escrow.functions.approveFunding(spender.address, UINT256_MAX))
    return LocalDeployment(
        backend=backend,
        escrow=escrow,
        token=token,
        admin=admin,
        operator=operator,
        arbiter=arbiter,
        pauser=pauser,
        payer=payer,
        merchant=merchant,
        fee_receiver=fee_receiver,
        other=other,
    )


def local_engine(
    db_url: str,
    backend: ChainBackend,
    world: LocalDeployment | None = None,
    *,
    confirmations: int = 0,
    roles: frozenset[Role] = ALL_ROLES,
    sagas: SagaFactory | None = None,
) -> SettlementEngine[LocalDeployment]:
    """A settlement engine on a local chain, through ``world`` (a fresh deployment if None),
    mining the blocks its ``confirmations`` take; ``engine.deployment`` is the world, with
    its parties and token, for the caller to pay with."""
    return SettlementEngine(
        db_url,
        backend,
        deploy_local(backend) if world is None else world,
        confirmations=confirmations,
        roles=roles,
        sagas=sagas,
        produce_blocks=backend.mine,
    )


def _signers(backend: ChainBackend) -> list[Signer]:
    """One signer per role, from the chain's funded accounts, in the dataclass's order."""
    accounts = backend.accounts()
    if len(accounts) < ACCOUNTS_NEEDED:
        raise ValueError(f"a local deployment needs {ACCOUNTS_NEEDED} funded accounts")
    # The embedded EVM estimates gas by executing a transaction many times; a fixed limit
    # (simulated once for reverts) keeps its tests fast. Gas used is the same either way.
    gas_limit = EMBEDDED_GAS_LIMIT if backend.name == "embedded" else None
    return [
        Signer(backend.w3, account, gas_limit=gas_limit) for account in accounts[:ACCOUNTS_NEEDED]
    ]
