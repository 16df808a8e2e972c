"""`settle deploy`: plan a deployment of SettlementEscrow on a named network, show it (dry run)
or carry it out, and say what happened, as a table or as JSON."""

from __future__ import annotations

import json
import os
from pathlib import Path

from eth_account.signers.local import LocalAccount
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from engine.chain.backends.anvil import anvil_accounts
from engine.chain.contracts.escrow import ESCROW_NAME
from engine.chain.keys import KEY_ENV_VAR, load_signer
from engine.chain.networks import ANVIL_CHAIN_ID, Network, get_network
from engine.deploy.create2 import PROXY_ADDRESS
from engine.deploy.deployer import deploy
from engine.deploy.errors import NetworkNotDeployable
from engine.deploy.ether_units import format_eth, format_gwei
from engine.deploy.plan import DeploymentPlan, plan_deployment
from engine.deploy.record import DEFAULT_DEPLOYMENTS_DIR
from engine.deploy.roles import roles_from_env
from engine.deploy.rpc_connection import (
    check_chain,
    connect,
    default_rpc_url,
    rpc_errors,
    shown_url,
)


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
