"""`settle chain-check`: operations through the tx manager and indexer while every chain fault
is injected; exit 0 only when none was applied twice or lost and the indexer equals the chain."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from engine.cli.options import JsonFlag
from engine.cli.render import json_out, progress, show
from engine.tools.chain_check.command import require_anvil
from engine.tools.chain_check.runner import CheckProgress, run_chain_check
from engine.tools.chain_check.tally import ChainCheckResult
from engine.tools.chain_check.workload import OPERATIONS_DEFAULT


def chain_check(
    network: Annotated[str, typer.Option("--network", help="A local network: anvil.")] = "anvil",
    operations: Annotated[int, typer.Option("--operations", min=2, max=5000)] = OPERATIONS_DEFAULT,
    db: Annotated[
        str | None, typer.Option("--db", help="Database for the run (default: a temporary file).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run operations through the tx manager and indexer while injecting every chain fault."""
    raise typer.Exit(cmd_chain_check(network, as_json, operations, db))


def cmd_chain_check(
    network: str, as_json: bool, operations: int = OPERATIONS_DEFAULT, db_url: str | None = None
) -> int:
    require_anvil(network)
    if as_json:
        result = run_chain_check(operations, db_url=db_url)
        json_out(result.to_dict())
        return 0 if result.passed else 1
    started = time.monotonic()
    with progress("starting anvil, deploying the escrow", operations, counted=True) as update:

        def on_round(done: CheckProgress) -> None:
            faults = ", ".join(f"{kind} {count}" for kind, count in done.faults.items())
            update(
                completed=done.confirmed,
                description=f"round {done.round} · faults: {faults} · confirmed",
            )

        result = run_chain_check(operations, db_url=db_url, on_round=on_round)
    show(_table(result, operations, time.monotonic() - started))
    show(
        "[green]passed[/green]: every operation applied exactly once, indexer equals chain"
        if result.passed
        else "[red]failed[/red]: see duplicates, lost and indexer_matches_chain"
    )
    return 0 if result.passed else 1


def _table(result: ChainCheckResult, operations: int, elapsed_s: float) -> Table:
    table = Table(
        title="chain-check on anvil", caption=f"{operations} operations, {elapsed_s:.1f} s"
    )
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in result.to_dict().items():
        table.add_row(name.replace("_", " "), str(value).lower())
    return table
