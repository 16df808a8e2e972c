"""The engine's view of SettlementEscrow: call encoding, the packed batch format, payer
signatures, and a small signer that sends locally signed transactions.

The packed batch record layout is defined once in the contract's NatSpec of `settleBatch`;
`encode_record` is its only Python writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from functools import lru_cache
from typing import Any, Final, cast

from eth_abi import encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_tester.exceptions import TransactionFailed as TesterTransactionFailed
from eth_typing import Hash32
from eth_utils import to_checksum_address
from web3 import Web3
from web3.contract import Contract
from web3.contract.contract import ContractFunction
from web3.exceptions import ContractLogicError
from web3.types import Nonce, TxParams, TxReceipt, Wei

from engine.chain.contracts.compiler import load_artifact
from engine.chain.contracts.reverts import ContractReverted, decode_revert, revert_data
from engine.chain.errors import ChainError
from engine.domain.ids import PaymentTerms
from engine.domain.money import EXTRA_LEGS_MAX, Leg

ESCROW_NAME: Final = "SettlementEscrow"
# The escrow's AccessControl roles besides the admin's, in the order deployments grant them.
ROLES: Final = ("OPERATOR_ROLE", "ARBITER_ROLE", "PAUSER_ROLE")
GAS_SAFETY_PERCENT: Final = (
    125  # estimates are exact on a quiet chain; state can move before mining
)
GAS_LIMIT_MAX: Final = 30_000_000


class Method(IntEnum):
    """How an authorization pulls the payer's funds (the contract's `Method`)."""

    ALLOWANCE = 0
    PERMIT = 1
    ERC3009 = 2


class Kind(IntEnum):
    """A batch operation's kind (the contract's `Kind`)."""

    AUTHORIZE = 0
    CHARGE = 1
    CAPTURE = 2
    VOID = 3
    REFUND = 4


def legs_tuple(legs: Sequence[Leg]) -> list[tuple[str, int]]:
    """Extra capture legs as the ABI's (address,uint120)[]."""
    return [(leg.recipient, leg.amount) for leg in legs]


def terms_tuple(terms: PaymentTerms) -> tuple[Any, ...]:
    """The terms as the ABI tuple, in the struct's field order."""
    return (
        terms.payer,
        terms.merchant,
        terms.token,
        terms.max_amount,
        terms.authorization_expiry,
        terms.refund_expiry,
        terms.min_fee_bps,
        terms.max_fee_bps,
        terms.fee_receiver,
        terms.operator,
        terms.salt,
    )


_LEGS_TYPE: Final = "(address,uint120)[]"


@dataclass(frozen=True)
class BatchOp:
    """One operation of `settleBatch`; build it with the class methods, which encode `data`."""

    kind: Kind
    terms: PaymentTerms
    amount: int
    seq: int = 0
    fee_bps: int = 0
    data: bytes = field(default=b"", repr=False)

    @classmethod
    def authorize(cls, terms: PaymentTerms, amount: int, method: Method, auth: bytes) -> BatchOp:
        return cls(Kind.AUTHORIZE, terms, amount, data=encode(["uint8", "bytes"], [method, auth]))

    @classmethod
    def charge(
        cls,
        terms: PaymentTerms,
        amount: int,
        method: Method,
        auth: bytes,
        fee_bps: int,
        legs: Sequence[Leg] = (),
    ) -> BatchOp:
        data = encode(["uint8", "bytes", _LEGS_TYPE], [method, auth, legs_tuple(legs)])
        return cls(Kind.CHARGE, terms, amount, fee_bps=fee_bps, data=data)

    @classmethod
    def capture(
        cls, terms: PaymentTerms, seq: int, amount: int, fee_bps: int, legs: Sequence[Leg] = ()
    ) -> BatchOp:
        data = encode([_LEGS_TYPE], [legs_tuple(legs)]) if legs else b""
        return cls(Kind.CAPTURE, terms, amount, seq=seq, fee_bps=fee_bps, data=data)

    @classmethod
    def void(cls, terms: PaymentTerms, seq: int, amount: int) -> BatchOp:
        return cls(Kind.VOID, terms, amount, seq=seq)

    @classmethod
    def refund(
        cls, terms: PaymentTerms, seq: int, amount: int, *, merchant_funds: bool = False
    ) -> BatchOp:
        data = encode(["bool"], [True]) if merchant_funds else b""
        return cls(Kind.REFUND, terms, amount, seq=seq, data=data)


@lru_cache(maxsize=4_096)
def _address(value: str) -> bytes:
    # The same few parties recur in every record of a batch.
    return bytes.fromhex(value.removeprefix("0x"))


# A record's fixed part: kind, seq, fee, amount, the terms and the data's length.
RECORD_HEADER_BYTES: Final = 1 + 2 + 2 + 15 + 3 * 20 + 15 + 6 + 6 + 2 + 2 + 2 * 20 + 32 + 2


def encode_record(op: BatchOp) -> bytes:
    """One packed record: big-endian, unpadded, in the order the contract's NatSpec gives."""
    t = op.terms
    if len(op.data) > 0xFFFF:
        raise ValueError("batch record data must fit in 65535 bytes")
    return b"".join(
        (
            op.kind.to_bytes(1, "big"),
            op.seq.to_bytes(2, "big"),
            op.fee_bps.to_bytes(2, "big"),
            op.amount.to_bytes(15, "big"),
            _address(t.payer),
            _address(t.merchant),
            _address(t.token),
            t.max_amount.to_bytes(15, "big"),
            t.authorization_expiry.to_bytes(6, "big"),
            t.refund_expiry.to_bytes(6, "big"),
            t.min_fee_bps.to_bytes(2, "big"),
            t.max_fee_bps.to_bytes(2, "big"),
            _address(t.fee_receiver),
            _address(t.operator),
            t.salt.to_bytes(32, "big"),
            len(op.data).to_bytes(2, "big"),
            op.data,
        )
    )


def encode_batch(ops: Iterable[BatchOp]) -> bytes:
    return b"".join(encode_record(op) for op in ops)


# Upper bounds of what one operation of a non-atomic batch costs, isolating call included, in
# the worst case the escrow allows: first-time token balances for every recipient, a cold
# payer, the most extra legs (each leg adds `_LEG_GAS_BOUND`). Measured costs are well below
# (tests/chain/test_batch_gas_bound.py holds them to it); calldata is counted separately.
_OP_GAS_BOUND: Final = {
    Kind.AUTHORIZE: 160_000,
    Kind.CHARGE: 260_000,
    Kind.CAPTURE: 120_000,
    Kind.VOID: 90_000,
    Kind.REFUND: 140_000,
}
_LEG_GAS_BOUND: Final = 40_000
_BATCH_GAS_BASE: Final = 60_000  # the transaction, the batch frame and the netted payouts' loop
_CALLDATA_GAS_PER_BYTE: Final = 16


def batch_gas_limit(ops: Sequence[BatchOp]) -> int:
    """A gas limit that applies every operation of a non-atomic batch, with no estimate.

    Estimating was the slowest part of sending a batch (about 120 ms per 100 operations on
    anvil, profiled); for a batch of known kinds a bound serves as well. Gas not used is not
    paid for. The bound does not cover what the escrow cannot know: a smart-wallet payer's
    ERC-1271 check (a passkey verification costs ~150k gas) or a token's unusual transfer.
    Should a bound fall short, the operation itself or a call nested in it (the wallet's
    check, the token) runs out of gas, and the escrow reverts the whole batch with
    ``BatchOutOfGas(index)`` (or ``PayoutOutOfGas`` for a netted payout) instead of logging the
    starved operation as refused; the caller sends it again under an estimate.
    """
    gas = _BATCH_GAS_BASE
    for op in ops:
        legs = 0
        if op.kind in (Kind.CAPTURE, Kind.CHARGE) and op.data:
            legs = EXTRA_LEGS_MAX
        gas += _OP_GAS_BOUND[op.kind] + legs * _LEG_GAS_BOUND
        gas += _CALLDATA_GAS_PER_BYTE * (RECORD_HEADER_BYTES + len(op.data))
    return min(gas, GAS_LIMIT_MAX)


def sign_payment(payer: LocalAccount, payment_hash: bytes) -> bytes:
    """The payer's consent to the terms: a signature over their EIP-712 hash (the payment id)."""
    return bytes(payer.unsafe_sign_hash(Hash32(payment_hash)).signature)


_PERMIT_FIELDS: Final = (
    ("owner", "address"),
    ("spender", "address"),
    ("value", "uint256"),
    ("nonce", "uint256"),
    ("deadline", "uint256"),
)
_RECEIVE_FIELDS: Final = (
    ("from", "address"),
    ("to", "address"),
    ("value", "uint256"),
    ("validAfter", "uint256"),
    ("validBefore", "uint256"),
    ("nonce", "bytes32"),
)
_DOMAIN_TYPES: Final = [
    {"name": "name", "type": "string"},
    {"name": "version", "type": "string"},
    {"name": "chainId", "type": "uint256"},
    {"name": "verifyingContract", "type": "address"},
]


def _sign_for_token(
    signer: LocalAccount,
    token: Contract,
    primary_type: str,
    fields: tuple[tuple[str, str], ...],
    message: dict[str, Any],
) -> tuple[int, bytes, bytes]:
    """(v, r, s) of EIP-712 typed data under the token's own domain (ERC-5267)."""
    name, version, chain_id, verifying = _eip712_domain(token)
    signed = Account.sign_typed_data(
        signer.key,
        full_message={
            "types": {
                "EIP712Domain": _DOMAIN_TYPES,
                primary_type: [{"name": n, "type": t} for n, t in fields],
            },
            "primaryType": primary_type,
            "domain": {
                "name": name,
                "version": version,
                "chainId": chain_id,
                "verifyingContract": verifying,
            },
            "message": message,
        },
    )
    return signed.v, signed.r.to_bytes(32, "big"), signed.s.to_bytes(32, "big")


def permit_auth(
    payer: LocalAccount,
    token: Contract,
    spender: str,
    value: int,
    deadline: int,
    payment_hash: bytes,
) -> bytes:
    """`auth` for Method.PERMIT: an EIP-2612 permit for `value` plus the terms signature."""
    message = {
        "owner": payer.address,
        "spender": spender,
        "value": value,
        "nonce": token.functions.nonces(payer.address).call(),
        "deadline": deadline,
    }
    v, r, s = _sign_for_token(payer, token, "Permit", _PERMIT_FIELDS, message)
    return encode(
        ["uint256", "uint8", "bytes32", "bytes32", "bytes"],
        [deadline, v, r, s, sign_payment(payer, payment_hash)],
    )


def erc3009_auth(
    payer: LocalAccount,
    token: Contract,
    escrow: str,
    amount: int,
    valid_after: int,
    valid_before: int,
    payment_hash: bytes,
) -> bytes:
    """`auth` for Method.ERC3009: receiveWithAuthorization signed with the payment id as nonce."""
    message = {
        "from": payer.address,
        "to": escrow,
        "value": amount,
        "validAfter": valid_after,
        "validBefore": valid_before,
        "nonce": payment_hash,
    }
    v, r, s = _sign_for_token(payer, token, "ReceiveWithAuthorization", _RECEIVE_FIELDS, message)
    return encode(
        ["uint256", "uint256", "uint8", "bytes32", "bytes32"], [valid_after, valid_before, v, r, s]
    )


def _eip712_domain(token: Contract) -> tuple[str, str, int, str]:
    _, name, version, chain_id, verifying, _, _ = token.functions.eip712Domain().call()
    return name, version, chain_id, verifying


class TransactionFailed(ChainError):
    """A mined transaction reverted though its simulation passed (state moved in between)."""

    code = "transaction_failed"


class Signer:
    """Sends contract calls signed locally with one key, tracking its nonce itself.

    This is the simple, synchronous path used by the demo, the gas report and contract tests;
    the engine's transaction manager adds persistence, fee bumping and batching on top.
    """

    def __init__(self, w3: Web3, account: LocalAccount, *, gas_limit: int | None = None) -> None:
        """`gas_limit` skips gas estimation (a binary search of executions, the slowest part of
        a send on the embedded EVM): the call is simulated once instead, for its revert."""
        self.w3 = w3
        self.account = account
        self.address = account.address
        self.gas_limit = gas_limit
        self.chain_id = w3.eth.chain_id
        self._nonce = 0
        self.resync()

    def resync(self) -> None:
        """Re-reads the nonce from the chain (after a snapshot revert or an outside send)."""
        self._nonce = self.w3.eth.get_transaction_count(self.address, "pending")

    def send(self, call: ContractFunction, *, value: int = 0) -> TxReceipt:
        """Simulates, signs, sends and waits; a revert raises ContractReverted by name."""
        params: TxParams = {"from": self.address, "value": Wei(value)}
        try:
            if self.gas_limit is not None and isinstance(call, ContractFunction):
                call.call(params)
                gas = self.gas_limit
            else:
                estimate = call.estimate_gas(params)
                gas = min(estimate * GAS_SAFETY_PERCENT // 100, GAS_LIMIT_MAX)
        except (ContractLogicError, TesterTransactionFailed) as error:
            raise _decoded(error) from None
        tx = call.build_transaction(
            {**params, "nonce": Nonce(self._nonce), "gas": gas, "chainId": self.chain_id}
        )
        signed = self.account.sign_transaction(cast(dict[str, Any], tx))
        tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        self._nonce += 1
        receipt = self.w3.eth.wait_for_transaction_receipt(tx_hash)
        if receipt["status"] != 1:
            raise TransactionFailed(f"transaction {tx_hash.hex()} reverted when mined")
        return receipt

    def deploy(self, artifact_name: str, *args: Any) -> Contract:
        """Deploys a checked-in artifact and returns the bound contract."""
        artifact = load_artifact(artifact_name)
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        receipt = self.send(factory.constructor(*args))  # type: ignore[arg-type]
        address = receipt["contractAddress"]
        if address is None:
            raise TransactionFailed(f"deploying {artifact_name} created no contract")
        return self.w3.eth.contract(address=address, abi=artifact.abi)


def _decoded(error: Exception) -> ContractReverted:
    data = revert_data(error)
    if data is None:
        return ContractReverted("Reverted", {"message": str(error)})
    return decode_revert(data)


def bind(w3: Web3, artifact_name: str, address: str) -> Contract:
    """A contract object for a deployed, checked-in artifact."""
    return w3.eth.contract(
        address=to_checksum_address(address), abi=load_artifact(artifact_name).abi
    )


# What the engine reads of any ERC-20 token: balances (e.g. the escrow's, to reconcile).
ERC20_BALANCE_ABI: Final = (
    {
        "type": "function",
        "name": "balanceOf",
        "stateMutability": "view",
        "inputs": [{"name": "account", "type": "address"}],
        "outputs": [{"name": "", "type": "uint256"}],
    },
)


def erc20(w3: Web3, address: str) -> Contract:
    """Any ERC-20 token, for reading balances; no artifact of ours needed."""
    return w3.eth.contract(address=to_checksum_address(address), abi=ERC20_BALANCE_ABI)


def call_view(call: ContractFunction) -> Any:
    """A view call whose revert is decoded like a transaction's."""
    try:
        return call.call()
    except (ContractLogicError, TesterTransactionFailed) as error:
        raise _decoded(error) from None


__all__ = [
    "ESCROW_NAME",
    "BatchOp",
    "ContractReverted",
    "Kind",
    "Leg",
    "Method",
    "Signer",
    "TransactionFailed",
    "bind",
    "call_view",
    "encode_batch",
    "encode_record",
    "erc20",
    "erc3009_auth",
    "legs_tuple",
    "permit_auth",
    "sign_payment",
    "terms_tuple",
]
