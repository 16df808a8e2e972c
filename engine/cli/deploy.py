"""`settle deploy`: the escrow at its deterministic CREATE2 address, recorded in deployments/."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from engine.chain.contracts.escrow import ESCROW_NAME
from engine.cli.options import JsonFlag
from engine.cli.render import escape, json_out, note, show
from engine.deploy.command import DeployOutcome, deploy_to
from engine.deploy.create2 import PROXY_ADDRESS
from engine.deploy.ether_units import format_eth, format_gwei
from engine.deploy.plan import DeploymentPlan
from engine.store.redaction import redact_url


def deploy(
    network: Annotated[str, typer.Option("--network", help="anvil, sepolia, base-sepolia, ...")],
    rpc_url: Annotated[str | None, typer.Option("--rpc-url", help="JSON-RPC endpoint.")] = None,
    keystore: Annotated[
        Path | None, typer.Option("--keystore", help="Encrypted key file of the deployer.")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Show the plan, send nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Deploy the escrow at its deterministic CREATE2 address and record it in deployments/."""
    raise typer.Exit(cmd_deploy(network, rpc_url, keystore, dry_run, as_json))


def cmd_deploy(
    network: str, rpc_url: str | None, keystore: Path | None, dry_run: bool, as_json: bool
) -> int:
    """0 when deployed, already deployed, or (dry run) planned; user errors raise."""
    outcome = deploy_to(
        network,
        rpc_url,
        keystore,
        dry_run=dry_run,
        progress=lambda line: None if as_json else show(escape(line)),
    )
    if outcome.dev_account is not None:
        note(
            f"no key given: deploying from anvil's public dev account {outcome.dev_account}",
            as_json=as_json,
        )
    plan, result = outcome.plan, outcome.result
    if result is None:
        if as_json:
            json_out({"dry_run": True, **plan.to_dict()})
        else:
            show(_plan_table(plan, outcome.url))
        return 0
    if as_json:
        json_out({"status": result.status, "sent": list(result.sent), **result.record})
    elif result.status == "unchanged":
        show(
            f"[green]{ESCROW_NAME} is already at {plan.escrow} with its roles granted: "
            f"nothing to do[/green] ({escape(str(result.record_path))})"
        )
    else:
        verb = "deployed" if result.status == "deployed" else "already at"
        show(
            f"[green]{ESCROW_NAME} {verb} {plan.escrow}[/green] on {_where(outcome)}; code "
            f"checked; wrote {escape(str(result.record_path))}"
        )
    return 0


def _where(outcome: DeployOutcome) -> str:
    return f"{outcome.network.name} (chain id {outcome.network.chain_id})"


def _plan_table(plan: DeploymentPlan, url: str) -> Table:
    table = Table(title="settle deploy --dry-run: nothing is sent", show_header=False)
    table.add_row("network", f"{plan.network.name} (chain id {plan.chain_id}) at {redact_url(url)}")
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
    return table
