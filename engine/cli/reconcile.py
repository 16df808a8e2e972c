"""`settle reconcile`: ledger against chain, per payment and per asset."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from engine.chain.binding import ChainUnbound, check_binding, read_binding
from engine.chain.errors import RpcUrlMissing
from engine.cli.chain_access import connected_chain
from engine.cli.options import DEFAULT_DB_URL, DbUrl, JsonFlag, NetworkName, RpcUrl
from engine.cli.render import escape, json_out, show
from engine.ops.reconcile import ChainTarget, ReconcileReport
from engine.ops.reconcile import reconcile as reconcile_books
from engine.store.db import open_migrated


def reconcile(
    db: DbUrl = DEFAULT_DB_URL,
    network: NetworkName = None,
    rpc_url: RpcUrl = None,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Re-sync a mismatched payment's ledger from chain logs."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Compare ledger and chain per payment and per asset; exit 1 on any mismatch."""
    raise typer.Exit(cmd_reconcile(db, as_json, repair, rpc_url=rpc_url, network=network))


def cmd_reconcile(
    db_url: str,
    as_json: bool,
    repair: bool,
    rpc_url: str | None = None,
    network: str | None = None,
) -> int:
    """0 when every item matches, 1 on any mismatch. The chain is `--network` (the embedded
    chain kept beside the database, or a preset's RPC) or `--rpc-url`/$SETTLE_RPC_URL; the
    database's binding names the escrow and is checked against what the chain serves."""
    if network is None and not rpc_url:
        raise RpcUrlMissing(
            "reconciliation reads the chain: pass --network NAME (embedded for the demo's "
            "database), --rpc-url URL, or set SETTLE_RPC_URL"
        )
    report = reconcile_at(db_url, network, rpc_url, repair=repair)
    if as_json:
        json_out(report.to_json())
    else:
        show(f"{report.matched} matched, {report.mismatched} mismatched")
        for mismatch in report.details:
            show(f"  {escape(str(mismatch.to_json()))}")
        if report.repaired:
            show(f"repaired from chain logs: {', '.join(report.repaired)}")
        if report.resolved:
            show(f"no longer conflicted: {', '.join(report.resolved)}")
    return 0 if report.mismatched == 0 else 1


def reconcile_at(
    db_url: str, network: str | None, rpc_url: str | None, *, repair: bool
) -> ReconcileReport:
    database = open_migrated(db_url)
    try:
        with connected_chain(network, rpc_url, db_url) as w3:
            if read_binding(database) is None:
                raise ChainUnbound(
                    "this database is bound to no chain yet: bind it with `settle db bind "
                    "--network NAME` (the escrow from deployments/CHAIN_ID.json, or "
                    "--escrow ADDRESS)"
                )
            binding = check_binding(database, w3)
            target = ChainTarget(w3, binding.chain_id, binding.escrow_address)
            return reconcile_books(database, target, now=int(time.time()), repair=repair)
    finally:
        database.dispose()
