"""Carrying out a deployment plan: put SettlementEscrow at its deterministic address
(engine.deploy.escrow_create2), grant its roles, and record what was done in
deployments/<chain-id>.json.

Order of work, so that a failure leaves nothing claimed that did not happen: every check that
can refuse runs in the plan (engine.deploy.plan), before the first transaction; each
transaction is waited for; the record is written only after the code at the address has been
checked, and holds only what receipts confirmed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from eth_account.signers.local import LocalAccount
from web3 import Web3
from web3.types import TxReceipt

from engine.chain.contracts.compiler import load_artifact
from engine.chain.contracts.escrow import ESCROW_NAME
from engine.chain.rpc import hex_data
from engine.deploy.create2 import PROXY_ADDRESS, ProxyState, install_proxy, proxy_calldata
from engine.deploy.deployed_code import verify_deployed
from engine.deploy.errors import InsufficientFunds
from engine.deploy.escrow_create2 import ESCROW_SALT
from engine.deploy.plan import TRANSFER_GAS, DeploymentPlan, Grant
from engine.deploy.record import (
    DEFAULT_DEPLOYMENTS_DIR,
    build_record,
    read_record,
    write_json,
)
from engine.deploy.roles import grant_calldata
from engine.deploy.sender import Sender, estimate_gas, funds_message, gas_limit

RECEIPT_TIMEOUT_S: Final = 300

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
            funds_message(plan.deployer, plan.max_cost_wei, plan.balance_wei, "deploy")
        )
    record_path = deployments_dir / f"{plan.chain_id}.json"
    input_path = deployments_dir / f"{plan.chain_id}.standard-input.json"
    previous = read_record(record_path)
    same_escrow = previous is not None and previous["escrow"]["address"] == plan.escrow
    if plan.nothing_to_send and same_escrow and input_path.is_file():
        assert previous is not None
        return DeploymentResult("unchanged", previous, record_path, ())

    sender = Sender(w3, account, plan.fees, receipt_timeout_s)
    sent: list[str] = []

    def send(to: str, data: bytes, gas: int, what: str, value_wei: int = 0) -> TxReceipt:
        receipt = sender.send(to, data, gas, what, value_wei)
        sent.append(hex_data(receipt["transactionHash"]))
        progress(f"{what}: {sent[-1]} (block {receipt['blockNumber']})")
        return receipt

    proxy_tx = None
    if plan.proxy is ProxyState.MISSING and not plan.escrow_deployed:
        what = "fund the CREATE2 proxy's one-time deployer"
        proxy_tx = hex_data(
            install_proxy(w3, lambda to, wei: send(to, b"", TRANSFER_GAS, what, wei))
        )
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
            data = grant_calldata(contract, grant.role, grant.account)
            gas = estimate_gas(w3, plan.deployer, plan.escrow, data, what)
            granted[grant] = _tx_info(send(plan.escrow, data, gas_limit(gas), what))
    finally:
        # Written whatever happened to the grants: the escrow exists, and the record names
        # only the grants whose receipts came back.
        record = build_record(plan, previous, same_escrow, escrow_tx, code_hash, proxy_tx, granted)
        write_json(input_path, plan.standard_input)
        write_json(record_path, record)
    status: Status = "updated" if plan.escrow_deployed else "deployed"
    return DeploymentResult(status, record, record_path, tuple(sent))


def _tx_info(receipt: TxReceipt) -> dict[str, Any]:
    return {
        "tx_hash": hex_data(receipt["transactionHash"]),
        "block_number": receipt["blockNumber"],
    }
