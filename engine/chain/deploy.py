"""`settle deploy`: put SettlementEscrow on a chain at its deterministic address, grant its
roles, and record what was done in deployments/<chain-id>.json.

The address comes from CREATE2 through the standard deployment proxy (engine.chain.create2)
with a fixed salt, and the initcode holds the admin (the deployer), so it depends only on the
code and the admin: the same on every chain, known before anything is sent, and re-running
finds the escrow already there instead of deploying a second one. Anyone may send the same
initcode to the proxy; that only ever yields this same contract with this same admin.

Order of work, so that a failure leaves nothing claimed that did not happen: every check that
can refuse (chain id, sources matching the artifacts, proxy usable, funds for the worst case)
runs before the first transaction; each transaction is waited for; the record is written only
after the code at the address has been checked, and holds only what receipts confirmed.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final, Literal
from urllib.parse import urlsplit

import requests
from eth_abi import encode
from eth_account.signers.local import LocalAccount
from eth_account.types import TransactionDictType
from eth_tester.exceptions import TransactionFailed as TesterTransactionFailed
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from eth_utils.exceptions import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from web3 import HTTPProvider, Web3
from web3.contract import Contract
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError
from web3.types import TxParams, TxReceipt

from engine.chain import chain_process
from engine.chain.anvil import anvil_accounts
from engine.chain.backend_errors import ChainIdMismatch
from engine.chain.compiler import (
    ARTIFACTS_DIR,
    SOLC_VERSION,
    compiler_settings,
    input_hash,
    load_artifact,
    standard_json_input,
)
from engine.chain.create2 import (
    PROXY_ADDRESS,
    PROXY_DEPLOYMENT_COST_WEI,
    ProxyState,
    create2_address,
    install_proxy,
    proxy_calldata,
    proxy_state,
    usable_proxy_state,
)
from engine.chain.errors import ChainError
from engine.chain.escrow import ESCROW_NAME, GAS_SAFETY_PERCENT
from engine.chain.keys import KEY_ENV_VAR, load_signer
from engine.chain.localnet import ROLES
from engine.chain.networks import ANVIL_CHAIN_ID, Network, get_network
from engine.chain.reverts import decode_revert, revert_data
from engine.domain.ids import DOMAIN_NAME, DOMAIN_VERSION, domain_separator

# Fixed, so the address depends on nothing but the initcode (code + admin). Changing it moves
# every future deployment to a new address.
ESCROW_SALT: Final = keccak(text="settle.SettlementEscrow")
DEFAULT_DEPLOYMENTS_DIR: Final = Path("deployments")
ROLE_ENV_VARS: Final = {
    "OPERATOR_ROLE": "SETTLE_OPERATORS",
    "ARBITER_ROLE": "SETTLE_ARBITERS",
    "PAUSER_ROLE": "SETTLE_PAUSERS",
}
ROLE_HOLDERS_MAX: Final = 20
TRANSFER_GAS: Final = 21_000
# A dry run cannot simulate grantRole before the escrow exists. A first grant uses 51,383 gas
# (anvil); the bound covers that with the safety factor, so the funds check stays an upper bound.
ROLE_GRANT_GAS_BOUND: Final = 80_000
# Without the proxy, a dry run simulates a plain creation instead; CREATE2 also hashes the
# initcode (6 gas a word), and the proxy call costs about as much as a creation's intrinsic gas.
CREATE2_HASH_GAS_PER_WORD: Final = 6
RPC_TIMEOUT_S: Final = 30
RECEIPT_TIMEOUT_S: Final = 300
EIP1559_TX_TYPE: Final = 2
ETH_DECIMALS: Final = 18
GWEI_DECIMALS: Final = 9
PUSH1: Final = 0x60
PUSH32: Final = 0x7F
WORD_BYTES: Final = 32
# The JSON record's format; bump on incompatible changes.
RECORD_VERSION: Final = 1


class NetworkNotDeployable(ChainError):
    code = "network_not_deployable"


class RpcUrlMissing(ChainError):
    code = "rpc_url_missing"


class RpcUnreachable(ChainError):
    code = "rpc_unreachable"


class InsufficientFunds(ChainError):
    code = "insufficient_funds"


class TransactionReverted(ChainError):
    code = "transaction_reverted"


class TransactionRejected(ChainError):
    """The node refused a signed transaction before it could be mined."""

    code = "transaction_rejected"


class ReceiptTimeout(ChainError):
    code = "receipt_timeout"


class CodeMismatch(ChainError):
    code = "code_mismatch"


class ArtifactsStale(ChainError):
    code = "artifacts_stale"


class RoleHolderInvalid(ChainError):
    code = "role_holder_invalid"


class DeploymentRecordInvalid(ChainError):
    code = "deployment_record_invalid"


# --- connecting ----------------------------------------------------------------------------


def shown_url(url: str) -> str:
    """The URL without what may be a secret: hosted RPC URLs carry API keys in the path."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    hidden = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{parts.hostname or ''}{port}{hidden}"


@contextmanager
def rpc_errors(url: str) -> Iterator[None]:
    """Turns transport failures while talking to `url` into one RpcUnreachable line."""
    try:
        yield
    except requests.Timeout:
        reason = "no answer in time"
    except requests.HTTPError as error:
        status = error.response.status_code if error.response is not None else "error"
        reason = f"HTTP {status}"
    except requests.ConnectionError as error:
        reason = "connection refused" if "refused" in str(error).lower() else "cannot connect"
    else:
        return
    raise RpcUnreachable(
        f"the RPC at {shown_url(url)} is not answering ({reason}): start the node "
        "(`settle chain up` for anvil) or pass the right --rpc-url"
    )


def connect(url: str, timeout_s: float = RPC_TIMEOUT_S) -> Web3:
    """A Web3 over HTTP whose node has answered once."""
    w3 = Web3(HTTPProvider(url, request_kwargs={"timeout": timeout_s}))
    with rpc_errors(url):
        w3.eth.get_block_number()
    return w3


def check_chain(w3: Web3, network: Network) -> None:
    """Refuses a node of another chain before anything is signed for it."""
    chain_id = w3.eth.chain_id
    if chain_id != network.chain_id:
        raise ChainIdMismatch(network.name, network.chain_id, chain_id)


# --- fees and a minimal local signer -------------------------------------------------------


@dataclass(frozen=True)
class Fees:
    base_fee_wei: int
    priority_fee_wei: int

    @property
    def max_fee_wei(self) -> int:
        # Twice the base fee survives six full blocks of base-fee increases (12.5% each)
        # before the transaction stops being includable.
        return 2 * self.base_fee_wei + self.priority_fee_wei

    @property
    def expected_wei_per_gas(self) -> int:
        return self.base_fee_wei + self.priority_fee_wei


def current_fees(w3: Web3) -> Fees:
    base_fee = w3.eth.get_block("latest").get("baseFeePerGas")
    assert base_fee is not None, "the chain has no EIP-1559 base fee"
    return Fees(int(base_fee), int(w3.eth.max_priority_fee))


def gas_limit(estimate: int) -> int:
    return estimate * GAS_SAFETY_PERCENT // 100


def estimate_gas(w3: Web3, sender: str, to: str | None, data: bytes, what: str) -> int:
    """The simulated gas of a transaction; a revert raises TransactionReverted by name."""
    params: TxParams = {"from": to_checksum_address(sender), "data": data}
    if to is not None:
        params["to"] = to_checksum_address(to)
    try:
        return int(w3.eth.estimate_gas(params))
    except (ContractLogicError, TesterTransactionFailed) as error:
        data_ = revert_data(error)
        reason = str(decode_revert(data_)) if data_ else "reverted without a reason"
        raise TransactionReverted(f"{what} would revert: {reason}") from None
    except (Web3RPCError, ValidationError) as error:
        raise _refusal(error, sender, what) from None


class Sender:
    """Signs locally and sends one transaction at a time, waiting for each to be mined.

    Deployment sends a handful of transactions once; the transaction manager (persisted
    nonces, replacement, batching) is for the engine's steady flow, not for this.
    """

    def __init__(
        self, w3: Web3, account: LocalAccount, fees: Fees, receipt_timeout_s: float
    ) -> None:
        self.w3 = w3
        self.account = account
        self.fees = fees
        self.receipt_timeout_s = receipt_timeout_s
        self.chain_id = w3.eth.chain_id
        self._nonce = int(w3.eth.get_transaction_count(account.address, "pending"))

    def send(self, to: str, data: bytes, gas: int, what: str, value_wei: int = 0) -> TxReceipt:
        """Sends with `gas` as the limit; returns the receipt of a successful transaction."""
        address = self.account.address
        needed = gas * self.fees.max_fee_wei + value_wei
        balance = self.w3.eth.get_balance(address)
        if balance < needed:
            raise InsufficientFunds(_funds_message(address, needed, balance, what))
        tx: TransactionDictType = {
            "type": EIP1559_TX_TYPE,
            "chainId": self.chain_id,
            "nonce": self._nonce,
            "to": to_checksum_address(to),
            "value": value_wei,
            "data": data,
            "gas": gas,
            "maxFeePerGas": self.fees.max_fee_wei,
            "maxPriorityFeePerGas": self.fees.priority_fee_wei,
        }
        signed = self.account.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except (Web3RPCError, ValidationError) as error:
            raise _refusal(error, address, what) from None
        self._nonce += 1
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout_s
            )
        except TimeExhausted:
            raise ReceiptTimeout(
                f"{what}: transaction {tx_hash.to_0x_hex()} was sent but not mined within "
                f"{self.receipt_timeout_s:g} s; re-run once it is mined or dropped: a "
                "deployment that landed is found at its address, not repeated"
            ) from None
        if receipt["status"] != 1:
            raise TransactionReverted(
                f"{what}: transaction {tx_hash.to_0x_hex()} reverted in block "
                f"{receipt['blockNumber']}"
            )
        return receipt


def _refusal(error: Exception, address: str, what: str) -> ChainError:
    message = str(getattr(error, "message", None) or error)
    lowered = message.lower()
    if "insufficient funds" in lowered or "cannot afford" in lowered:
        return InsufficientFunds(f"{what}: account {address} cannot pay for the gas; fund it")
    return TransactionRejected(f"{what}: the node refused the transaction: {message}")


def _funds_message(address: str, needed_wei: int, balance_wei: int, what: str) -> str:
    return (
        f"{what}: account {address} holds {format_eth(balance_wei)} but needs up to "
        f"{format_eth(needed_wei)} for gas at current fees; fund it and re-run"
    )


def format_eth(wei: int) -> str:
    """Exact decimal ether, no floats: 1234500000000000 -> '0.0012345 ETH'."""
    return _decimal(wei, ETH_DECIMALS) + " ETH"


def format_gwei(wei: int) -> str:
    return _decimal(wei, GWEI_DECIMALS) + " gwei"


def _decimal(units: int, decimals: int) -> str:
    whole, fraction = divmod(units, 10**decimals)
    digits = f"{fraction:0{decimals}d}".rstrip("0")
    return f"{whole}.{digits}" if digits else str(whole)


# --- the deployed code check ---------------------------------------------------------------


def expected_immutables(chain_id: int, escrow: str) -> frozenset[bytes]:
    """Every value the escrow's constructor writes into its code (OpenZeppelin EIP712's).

    These are the only bytes in which deployed code may differ from the artifact's
    deployedBytecode, where the compiler leaves zero placeholders for them.
    """
    return frozenset(
        {
            _short_string(DOMAIN_NAME),
            _short_string(DOMAIN_VERSION),
            keccak(text=DOMAIN_NAME),
            keccak(text=DOMAIN_VERSION),
            chain_id.to_bytes(WORD_BYTES, "big"),
            bytes.fromhex(escrow[2:]).rjust(WORD_BYTES, b"\0"),
            domain_separator(chain_id, escrow),
        }
    )


def _short_string(text: str) -> bytes:
    """OpenZeppelin's ShortString: the bytes left-aligned, their length in the last byte."""
    raw = text.encode()
    assert len(raw) < WORD_BYTES, text
    return raw.ljust(WORD_BYTES - 1, b"\0") + bytes([len(raw)])


def immutable_slots(runtime: bytes) -> list[int]:
    """Offsets of the zero words the compiler leaves for immutables: PUSH32 0x00…00.

    Walks the instructions so that push data is never read as an opcode. The compiler pushes
    a real zero with PUSH0, so a PUSH32 of zero is a placeholder.
    """
    slots = []
    offset = 0
    while offset < len(runtime):
        opcode = runtime[offset]
        if opcode == PUSH32 and runtime[offset + 1 : offset + 1 + WORD_BYTES] == bytes(WORD_BYTES):
            slots.append(offset + 1)
        offset += 1 + (opcode - PUSH1 + 1 if PUSH1 <= opcode <= PUSH32 else 0)
    return slots


def check_escrow_code(code: bytes, artifact_runtime: bytes, chain_id: int, escrow: str) -> None:
    """Raises CodeMismatch unless `code` is the artifact's runtime with this deployment's
    immutables filled in: equal in every byte outside the placeholders, and each placeholder
    holding a value the constructor computes for this chain and address.

    Comparing hashes alone cannot work (the immutables differ per chain and address), and an
    eth_call simulation of the initcode would run at another address, so with other
    immutables. The CREATE2 address already commits to the initcode; this check proves that
    the runtime is the one the artifacts describe and that its EIP-712 domain (what payers
    sign against) is this chain's and this address's.
    """
    if len(code) != len(artifact_runtime):
        raise CodeMismatch(
            f"the code at {escrow} is {len(code)} bytes, {ESCROW_NAME}'s artifact "
            f"{len(artifact_runtime)}: it is another contract"
        )
    allowed = expected_immutables(chain_id, escrow)
    masked = bytearray(code)
    for slot in immutable_slots(artifact_runtime):
        if bytes(code[slot : slot + WORD_BYTES]) not in allowed:
            raise CodeMismatch(
                f"the code at {escrow} holds an unexpected immutable at byte {slot}: its "
                "EIP-712 domain is not this chain's and this address's"
            )
        masked[slot : slot + WORD_BYTES] = bytes(WORD_BYTES)
    if masked != artifact_runtime:
        first = next(
            i for i, (a, b) in enumerate(zip(masked, artifact_runtime, strict=True)) if a != b
        )
        raise CodeMismatch(
            f"the code at {escrow} is not {ESCROW_NAME} of these artifacts (it differs at "
            f"byte {first}); was it deployed from other sources?"
        )


def verify_deployed(w3: Web3, escrow: str, chain_id: int) -> bytes:
    """Checks the escrow's code (check_escrow_code); returns the keccak of that code."""
    code = bytes(w3.eth.get_code(to_checksum_address(escrow)))
    runtime = bytes.fromhex(load_artifact(ESCROW_NAME).deployed_bytecode[2:])
    check_escrow_code(code, runtime, chain_id, to_checksum_address(escrow))
    return keccak(code)


# --- planning ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PlannedTx:
    what: str
    gas_estimate: int
    # True when no simulation was possible yet (the escrow does not exist) and the figure is
    # an upper bound used as the gas limit as is.
    is_bound: bool = False
    value_wei: int = 0

    @property
    def gas_limit(self) -> int:
        return self.gas_estimate if self.is_bound else gas_limit(self.gas_estimate)


@dataclass(frozen=True)
class Grant:
    role: str
    account: ChecksumAddress


@dataclass(frozen=True)
class DeploymentPlan:
    """Everything a deployment would do and cost, found without sending anything."""

    network: Network
    deployer: ChecksumAddress
    escrow: ChecksumAddress
    proxy: ProxyState
    escrow_deployed: bool
    # Every configured role holder; `grants` are those that do not hold their role yet.
    roles: Mapping[str, tuple[ChecksumAddress, ...]]
    grants: tuple[Grant, ...]
    txs: tuple[PlannedTx, ...]
    fees: Fees
    balance_wei: int
    initcode: bytes = field(repr=False)
    standard_input: Mapping[str, Any] = field(repr=False)

    @property
    def chain_id(self) -> int:
        return self.network.chain_id

    @property
    def nothing_to_send(self) -> bool:
        return not self.txs

    @property
    def gas_total(self) -> int:
        return sum(tx.gas_estimate for tx in self.txs)

    @property
    def expected_cost_wei(self) -> int:
        per_gas = self.fees.expected_wei_per_gas
        return sum(tx.gas_estimate * per_gas + tx.value_wei for tx in self.txs)

    @property
    def max_cost_wei(self) -> int:
        per_gas = self.fees.max_fee_wei
        return sum(tx.gas_limit * per_gas + tx.value_wei for tx in self.txs)

    @property
    def has_funds(self) -> bool:
        return self.balance_wei >= self.max_cost_wei

    def to_dict(self) -> dict[str, Any]:
        return {
            "network": self.network.name,
            "chain_id": self.chain_id,
            "deployer": self.deployer,
            "balance_wei": self.balance_wei,
            "create2_proxy": {"address": PROXY_ADDRESS, "state": self.proxy.value},
            "escrow": {
                "address": self.escrow,
                "salt": _hex(ESCROW_SALT),
                "already_deployed": self.escrow_deployed,
            },
            "grants": [{"role": g.role, "account": g.account} for g in self.grants],
            "transactions": [
                {
                    "what": tx.what,
                    "gas": tx.gas_estimate,
                    "gas_is_bound": tx.is_bound,
                    "value_wei": tx.value_wei,
                }
                for tx in self.txs
            ],
            "fees": {
                "base_fee_wei": self.fees.base_fee_wei,
                "priority_fee_wei": self.fees.priority_fee_wei,
                "max_fee_wei": self.fees.max_fee_wei,
            },
            "gas_total": self.gas_total,
            "expected_cost_wei": self.expected_cost_wei,
            "max_cost_wei": self.max_cost_wei,
            "has_funds": self.has_funds,
        }


def escrow_initcode(admin: str) -> bytes:
    """Creation code plus constructor(admin): what the CREATE2 address commits to."""
    artifact = load_artifact(ESCROW_NAME)
    return bytes.fromhex(artifact.bytecode[2:]) + _constructor_arguments(admin)


def _constructor_arguments(admin: str) -> bytes:
    return encode(["address"], [to_checksum_address(admin)])


def escrow_address(admin: str) -> ChecksumAddress:
    """Where SettlementEscrow administered by `admin` lives, on every chain."""
    return create2_address(ESCROW_SALT, escrow_initcode(admin))


def role_id(role: str) -> bytes:
    """The contract's role constants are keccak256 of their names."""
    return keccak(text=role)


def plan_deployment(
    w3: Web3,
    network: Network,
    deployer: str,
    roles: Mapping[str, Sequence[str]] | None = None,
) -> DeploymentPlan:
    """What deploying from `deployer` would send and cost. Raises on whatever would make the
    deployment fail before it sends anything (wrong chain, stale artifacts, unusable proxy,
    code at the address that is not ours, a simulated revert). `roles` maps role names to
    holders; a role not given goes to the deployer."""
    check_chain(w3, network)
    deployer = to_checksum_address(deployer)
    standard_input = _checked_standard_input()
    holders = _role_holders(roles or {}, deployer)
    initcode = escrow_initcode(deployer)
    escrow = create2_address(ESCROW_SALT, initcode)
    deployed = bool(w3.eth.get_code(escrow))
    if deployed:
        verify_deployed(w3, escrow, network.chain_id)
    # Once the escrow is there, the proxy's state no longer matters.
    proxy = proxy_state(w3) if deployed else usable_proxy_state(w3)
    txs: list[PlannedTx] = []
    if proxy is ProxyState.MISSING and not deployed:
        # Its gas is paid by the one-time deployer, out of what we send it.
        what = "fund the CREATE2 proxy's one-time deployer"
        txs.append(PlannedTx(what, TRANSFER_GAS, value_wei=PROXY_DEPLOYMENT_COST_WEI))
    if not deployed:
        what = f"deploy {ESCROW_NAME}"
        if proxy is ProxyState.INSTALLED:
            calldata = proxy_calldata(ESCROW_SALT, initcode)
            gas = estimate_gas(w3, deployer, PROXY_ADDRESS, calldata, what)
        else:
            words = -(-len(initcode) // WORD_BYTES)
            gas = estimate_gas(w3, deployer, None, initcode, what)
            gas += CREATE2_HASH_GAS_PER_WORD * words
        txs.append(PlannedTx(what, gas))
    contract = w3.eth.contract(address=escrow, abi=load_artifact(ESCROW_NAME).abi)
    grants = []
    for role, accounts in holders.items():
        for account in accounts:
            if deployed and contract.functions.hasRole(role_id(role), account).call():
                continue
            grants.append(Grant(role, account))
            what = f"grant {role} to {account}"
            if deployed:
                data = _grant_calldata(contract, role, account)
                txs.append(PlannedTx(what, estimate_gas(w3, deployer, escrow, data, what)))
            else:
                txs.append(PlannedTx(what, ROLE_GRANT_GAS_BOUND, is_bound=True))
    return DeploymentPlan(
        network=network,
        deployer=deployer,
        escrow=escrow,
        proxy=proxy,
        escrow_deployed=deployed,
        roles=holders,
        grants=tuple(grants),
        txs=tuple(txs),
        fees=current_fees(w3),
        balance_wei=int(w3.eth.get_balance(deployer)),
        initcode=initcode,
        standard_input=standard_input,
    )


def _checked_standard_input() -> dict[str, Any]:
    """The compiler input for source verification, refused unless it is exactly the input
    the checked-in artifacts were compiled from (else an explorer could not verify them)."""
    standard_input = standard_json_input()
    recorded = _artifact_json()["inputHash"]
    if input_hash(standard_input) != recorded:
        raise ArtifactsStale(
            "contracts/ (or an OpenZeppelin file it imports) differs from what the checked-in "
            "artifacts were compiled from: run `settle contracts build` or restore the sources"
        )
    return standard_input


def _role_holders(
    roles: Mapping[str, Sequence[str]], deployer: ChecksumAddress
) -> dict[str, tuple[ChecksumAddress, ...]]:
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise RoleHolderInvalid(f"unknown roles {unknown}; the escrow's roles are {list(ROLES)}")
    holders = {}
    for role in ROLES:
        accounts = roles.get(role) or (deployer,)
        if len(accounts) > ROLE_HOLDERS_MAX:
            raise RoleHolderInvalid(f"more than {ROLE_HOLDERS_MAX} holders for {role}")
        try:
            holders[role] = tuple(dict.fromkeys(to_checksum_address(a) for a in accounts))
        except ValueError:
            raise RoleHolderInvalid(f"a holder of {role} is not an address: {accounts}") from None
    return holders


def _grant_calldata(contract: Contract, role: str, account: str) -> bytes:
    return bytes.fromhex(contract.encode_abi("grantRole", args=[role_id(role), account])[2:])


# --- deploying -----------------------------------------------------------------------------


Status = Literal["deployed", "updated", "unchanged"]


@dataclass(frozen=True)
class DeploymentResult:
    # deployed: the escrow was created now; updated: something else was sent or the record
    # (re)written; unchanged: nothing sent, nothing written.
    status: Status
    record: Mapping[str, Any]
    record_path: Path
    sent: tuple[str, ...]


def deploy(
    w3: Web3,
    plan: DeploymentPlan,
    account: LocalAccount,
    deployments_dir: Path = DEFAULT_DEPLOYMENTS_DIR,
    *,
    receipt_timeout_s: float = RECEIPT_TIMEOUT_S,
    progress: Callable[[str], None] = lambda _: None,
) -> DeploymentResult:
    """Carries out `plan` with `account` (the planned deployer) and records the outcome."""
    assert account.address == plan.deployer, "the plan was made for another deployer"
    if not plan.has_funds:
        raise InsufficientFunds(
            _funds_message(plan.deployer, plan.max_cost_wei, plan.balance_wei, "deploy")
        )
    record_path = deployments_dir / f"{plan.chain_id}.json"
    input_path = deployments_dir / f"{plan.chain_id}.standard-input.json"
    previous = _read_record(record_path)
    same_escrow = previous is not None and previous["escrow"]["address"] == plan.escrow
    if plan.nothing_to_send and same_escrow and input_path.is_file():
        assert previous is not None
        return DeploymentResult("unchanged", previous, record_path, ())

    sender = Sender(w3, account, plan.fees, receipt_timeout_s)
    sent: list[str] = []

    def send(to: str, data: bytes, gas: int, what: str, value_wei: int = 0) -> TxReceipt:
        receipt = sender.send(to, data, gas, what, value_wei)
        sent.append(_hex(receipt["transactionHash"]))
        progress(f"{what}: {sent[-1]} (block {receipt['blockNumber']})")
        return receipt

    proxy_tx = None
    if plan.proxy is ProxyState.MISSING and not plan.escrow_deployed:
        what = "fund the CREATE2 proxy's one-time deployer"
        proxy_tx = _hex(install_proxy(w3, lambda to, wei: send(to, b"", TRANSFER_GAS, what, wei)))
        progress(f"installed the CREATE2 proxy at {PROXY_ADDRESS}: {proxy_tx}")
    old_escrow = previous["escrow"] if previous is not None and same_escrow else {}
    escrow_tx = {k: old_escrow.get(k) for k in ("tx_hash", "block_number")}
    if not plan.escrow_deployed:
        what = f"deploy {ESCROW_NAME} at {plan.escrow}"
        calldata = proxy_calldata(ESCROW_SALT, plan.initcode)
        gas = estimate_gas(w3, plan.deployer, PROXY_ADDRESS, calldata, what)
        receipt = send(PROXY_ADDRESS, calldata, gas_limit(gas), what)
        escrow_tx = _tx_info(receipt)
    code_hash = verify_deployed(w3, plan.escrow, plan.chain_id)

    granted: dict[Grant, dict[str, Any]] = {}
    try:
        contract = w3.eth.contract(address=plan.escrow, abi=load_artifact(ESCROW_NAME).abi)
        for grant in plan.grants:
            what = f"grant {grant.role} to {grant.account}"
            data = _grant_calldata(contract, grant.role, grant.account)
            gas = estimate_gas(w3, plan.deployer, plan.escrow, data, what)
            granted[grant] = _tx_info(send(plan.escrow, data, gas_limit(gas), what))
    finally:
        # Written whatever happened to the grants: the escrow exists, and the record names
        # only the grants whose receipts came back.
        record = _record(plan, previous, same_escrow, escrow_tx, code_hash, proxy_tx, granted)
        _write_json(input_path, plan.standard_input)
        _write_json(record_path, record)
    status: Status = "updated" if plan.escrow_deployed else "deployed"
    return DeploymentResult(status, record, record_path, tuple(sent))


def _tx_info(receipt: TxReceipt) -> dict[str, Any]:
    return {"tx_hash": _hex(receipt["transactionHash"]), "block_number": receipt["blockNumber"]}


def _hex(value: bytes) -> str:
    return "0x" + bytes(value).hex()


def _artifact_path() -> Path:
    return ARTIFACTS_DIR / f"{ESCROW_NAME}.json"


def _artifact_json() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_artifact_path().read_text(encoding="utf-8"))
    return data


def _record(
    plan: DeploymentPlan,
    previous: Mapping[str, Any] | None,
    same_escrow: bool,
    escrow_tx: Mapping[str, Any],
    code_hash: bytes,
    proxy_tx: str | None,
    granted: Mapping[Grant, Mapping[str, Any]],
) -> dict[str, Any]:
    """deployments/<chain-id>.json: what is on chain, and how it got there."""
    pending = set(plan.grants)
    earlier_record = previous if previous is not None and same_escrow else {}
    earlier = earlier_record.get("roles", {})
    proxy_tx = proxy_tx or earlier_record.get("create2_proxy", {}).get("installed_by_tx")
    roles: dict[str, list[dict[str, Any]]] = {}
    for role, accounts in plan.roles.items():
        known = {entry["account"]: entry for entry in earlier.get(role, [])}
        roles[role] = []
        for account in accounts:
            grant = Grant(role, account)
            if grant in granted:
                tx = granted[grant]
            elif grant in pending:
                continue  # its grant was not confirmed: not claimed
            else:
                tx = _tx_of(known.get(account))  # held it before this run
            roles[role].append({"account": account, **tx})
    artifact_bytes = _artifact_path().read_bytes()
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "network": plan.network.name,
        "chain_id": plan.chain_id,
        "escrow": {
            "contract": ESCROW_NAME,
            "address": plan.escrow,
            "admin": plan.deployer,
            "deployer": plan.deployer,
            "salt": _hex(ESCROW_SALT),
            "constructor_arguments": _hex(_constructor_arguments(plan.deployer)),
            "initcode_keccak": _hex(keccak(plan.initcode)),
            "code_keccak": _hex(code_hash),
            **escrow_tx,
        },
        "create2_proxy": {"address": PROXY_ADDRESS, "installed_by_tx": proxy_tx},
        "roles": roles,
        "compiler": {
            "solc_version": SOLC_VERSION,
            "solc_build": json.loads(artifact_bytes)["compiler"]["version"],
            "settings": compiler_settings(),
            "input_hash": input_hash(plan.standard_input),
        },
        "artifacts": {
            _artifact_path().name: {"sha256": hashlib.sha256(artifact_bytes).hexdigest()}
        },
        "standard_input": f"{plan.chain_id}.standard-input.json",
    }
    if previous is not None and not same_escrow:
        older = list(previous.get("previous", []))
        record["previous"] = [{k: v for k, v in previous.items() if k != "previous"}, *older]
    elif previous is not None and "previous" in previous:
        record["previous"] = previous["previous"]
    return record


def _tx_of(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    entry = entry or {}
    return {"tx_hash": entry.get("tx_hash"), "block_number": entry.get("block_number")}


def _read_record(path: Path) -> dict[str, Any] | None:
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except ValueError:
        record = None
    escrow = record.get("escrow") if isinstance(record, dict) else None
    if not isinstance(escrow, dict) or not isinstance(escrow.get("address"), str):
        raise DeploymentRecordInvalid(f"{path} is not a deployment record; move it away and re-run")
    return record


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replaces the file whole: a reader sees the old record or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


# --- the command ---------------------------------------------------------------------------


def default_rpc_url(network: Network, environ: Mapping[str, str] = os.environ) -> str:
    """anvil: the one `settle chain up` started, else anvil's default port; a testnet: the
    URL in its environment variable."""
    if network.rpc_env_var is None:
        running = chain_process.running_chain()
        return running.url if running is not None else chain_process.DEFAULT_URL
    url = environ.get(network.rpc_env_var)
    if not url:
        raise RpcUrlMissing(
            f"no RPC URL for {network.name}: pass --rpc-url or set {network.rpc_env_var}"
        )
    return url


def roles_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, tuple[str, ...]]:
    """Role holders from SETTLE_OPERATORS, SETTLE_ARBITERS, SETTLE_PAUSERS (comma-separated
    addresses); a role whose variable is unset goes to the deployer."""
    roles = {}
    for role, variable in ROLE_ENV_VARS.items():
        value = environ.get(variable, "").strip()
        if value:
            roles[role] = tuple(part.strip() for part in value.split(",") if part.strip())
    return roles


def cmd_deploy(
    network: str, rpc_url: str | None, keystore: Path | None, dry_run: bool, as_json: bool
) -> int:
    """`settle deploy`: 0 when deployed, already deployed, or (dry run) planned.

    User errors raise ChainError / ChainBackendError subclasses for the CLI to print.
    """
    preset = get_network(network)
    if preset.name == "embedded":
        raise NetworkNotDeployable(
            "the embedded EVM lives inside the engine's process, which deploys there itself; "
            "to deploy by hand start anvil (`settle chain up`) and use --network anvil"
        )
    url = rpc_url or default_rpc_url(preset)
    console = Console(stderr=as_json, soft_wrap=True)
    with rpc_errors(url):
        w3 = connect(url)
        check_chain(w3, preset)
        account = _deployer(preset, keystore, console)
        plan = plan_deployment(w3, preset, account.address, roles_from_env())
        if dry_run:
            if as_json:
                print(json.dumps({"dry_run": True, **plan.to_dict()}))
            else:
                _print_plan(console, plan, url)
            return 0
        result = deploy(
            w3,
            plan,
            account,
            DEFAULT_DEPLOYMENTS_DIR,
            progress=lambda line: None if as_json else console.print(escape(line)),
        )
    if as_json:
        print(json.dumps({"status": result.status, "sent": list(result.sent), **result.record}))
    elif result.status == "unchanged":
        console.print(
            f"[green]{ESCROW_NAME} is already at {plan.escrow} with its roles granted: "
            f"nothing to do[/green] ({escape(str(result.record_path))})"
        )
    else:
        verb = "deployed" if result.status == "deployed" else "already at"
        console.print(
            f"[green]{ESCROW_NAME} {verb} {plan.escrow}[/green] on {preset.name}; code checked; "
            f"wrote {escape(str(result.record_path))}"
        )
    return 0


def _deployer(network: Network, keystore: Path | None, console: Console) -> LocalAccount:
    if keystore is None and KEY_ENV_VAR not in os.environ and network.chain_id == ANVIL_CHAIN_ID:
        account = anvil_accounts(1)[0]
        console.print(f"no key given: deploying from anvil's public dev account {account.address}")
        return account
    return load_signer(keystore)


def _print_plan(console: Console, plan: DeploymentPlan, url: str) -> None:
    table = Table(title="settle deploy --dry-run: nothing is sent", show_header=False)
    table.add_row("network", f"{plan.network.name} (chain id {plan.chain_id}) at {shown_url(url)}")
    table.add_row("deployer", f"{plan.deployer}, holds {format_eth(plan.balance_wei)}")
    table.add_row("CREATE2 proxy", f"{PROXY_ADDRESS}: {plan.proxy.value}")
    state = "already deployed, code checked" if plan.escrow_deployed else "to deploy"
    table.add_row(ESCROW_NAME, f"{plan.escrow}: {state}")
    for tx in plan.txs:
        gas = f"{'at most ' if tx.is_bound else ''}{tx.gas_estimate:,} gas"
        value = f" + {format_eth(tx.value_wei)}" if tx.value_wei else ""
        table.add_row("transaction", f"{tx.what}: {gas}{value}")
    if plan.nothing_to_send:
        table.add_row("transaction", "none: everything is in place")
    fees = plan.fees
    table.add_row(
        "fees",
        f"base {format_gwei(fees.base_fee_wei)} + tip {format_gwei(fees.priority_fee_wei)}, "
        f"capped at {format_gwei(fees.max_fee_wei)} per gas",
    )
    table.add_row(
        "estimated cost",
        f"{format_eth(plan.expected_cost_wei)} ({plan.gas_total:,} gas), "
        f"at most {format_eth(plan.max_cost_wei)}",
    )
    if not plan.has_funds:
        table.add_row("[red]funds[/red]", "[red]the deployer cannot pay the worst case[/red]")
    console.print(table)
