"""`settle chain-check --network anvil [--operations N] [--json]`: the chain check's report,
as JSON or as a table after a progress bar, and its verdict as the exit code."""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from engine.chain.networks import get_network
from engine.tools.chain_check.errors import ChainCheckNeedsAnvil
from engine.tools.chain_check.runner import CheckProgress, run_chain_check
from engine.tools.chain_check.workload import OPERATIONS_DEFAULT


def require_anvil(network: str) -> None:
    """Refuses every network but anvil (unknown names raise UnknownNetwork)."""
    chosen = get_network(network)
    if chosen.name != "anvil":
        raise ChainCheckNeedsAnvil(chosen.name)


def cmd_chain_check(
    network: str, as_json: bool, operations: int = OPERATIONS_DEFAULT, db_url: str | None = None
) -> int:
    """Exit 0 only when no operation was applied twice or lost and the indexer's output
    equals the chain's logs."""
    require_anvil(network)
    if as_json:
        result = run_chain_check(operations, db_url=db_url)
        print(json.dumps(result.to_dict()))
        return 0 if result.passed else 1
    console = Console()
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting anvil, deploying the escrow", total=operations)

        def show(progress: CheckProgress) -> None:
            faults = ", ".join(f"{kind} {count}" for kind, count in progress.faults.items())
            bar.update(
                task,
                completed=progress.confirmed,
                description=f"round {progress.round} · faults: {faults} · confirmed",
            )

        result = run_chain_check(operations, db_url=db_url, on_round=show)
    elapsed = time.monotonic() - started
    table = Table(title="chain-check on anvil", caption=f"{operations} operations, {elapsed:.1f} s")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in result.to_dict().items():
        table.add_row(name.replace("_", " "), str(value).lower())
    console.print(table)
    verdict = (
        "[green]passed[/green]: every operation applied exactly once, indexer equals chain"
        if result.passed
        else "[red]failed[/red]: see duplicates, lost and indexer_matches_chain"
    )
    console.print(verdict)
    return 0 if result.passed else 1
