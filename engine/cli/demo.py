"""`settle demo` and `settle walkthrough`: the engine shown end to end on the embedded EVM."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

import typer
from rich.table import Table

from engine.cli.options import DEMO_DB_URL, JsonFlag
from engine.cli.render import escape, json_out, progress, show
from engine.store.redaction import redact_url
from engine.tools import walkthrough as walk
from engine.tools.demo import ROUNDS, run_demo


def demo(
    db: Annotated[str, typer.Option("--db", help="A fresh SQLite or PostgreSQL database.")] = (
        DEMO_DB_URL
    ),
    as_json: JsonFlag = False,
) -> None:
    """Settle a mix of payments end to end on the embedded EVM: commands, outbox, relay,
    escrow, indexer, ledger; then trial balance, reconciliation and audit. Exit 1 if the books
    do not balance or match the chain. Afterwards the database can be inspected:
    `settle reconcile --network embedded --db URL`, `settle replay --verify --db URL`."""
    raise typer.Exit(cmd_demo_db(db, as_json))


def cmd_demo_db(db_url: str, as_json: bool) -> int:
    if as_json:
        result = run_demo(db_url)
        json_out(result)
    else:
        with progress("settling payments", len(ROUNDS)) as update:
            result = run_demo(db_url, lambda name: update(description=name, advance=1))
        show(*_summary_lines(result, db_url))
    sound = (
        result["audit"]["ok"]
        and result["reconciliation"]["mismatched"] == 0
        and all(value == 0 for value in result["ledger"]["trial_balance"].values())
    )
    return 0 if sound else 1


def _summary_lines(result: dict[str, Any], db_url: str) -> list[str]:
    payments = result["payments"]
    lines = [
        f"[bold]{payments['total']} payments[/bold] through the escrow, "
        f"[bold]{payments['settled']} settled[/bold] (captured, nothing left on hold):"
    ]
    lines += [f"  {status:<20} {count}" for status, count in sorted(payments["by_status"].items())]
    for asset, total in result["ledger"]["trial_balance"].items():
        lines.append(f"trial balance of {_asset_name(result, asset)}: {total} (0: balanced)")
    rec = result["reconciliation"]
    lines.append(
        f"reconciliation with the chain: {rec['matched']} matched, {rec['mismatched']} "
        f"mismatched ({rec['payments']} payments and {rec['assets']} "
        f"asset{'s' if rec['assets'] != 1 else ''}, each checked)"
    )
    audit = result["audit"]
    verdict = "intact" if audit["ok"] else "BROKEN"
    lines.append(f"event store: {audit['streams']} streams, {audit['events']} events, {verdict}")
    shown = escape(redact_url(db_url))
    lines.append(
        f"look again: settle reconcile --network embedded --db {shown}; "
        f"settle replay --verify --db {shown}; settle outbox list --db {shown}"
    )
    return lines


def _asset_name(result: dict[str, Any], asset: str) -> str:
    info = result["assets"][asset]
    return f"{escape(info['symbol'])} on chain {info['chain_id']}"


def walkthrough(as_json: JsonFlag = False) -> None:
    """Walk one payment through the escrow on the embedded EVM, balances after each step."""
    if as_json:
        json_out({"steps": [step.to_dict() for step in walk.run()]})
        return
    show("[bold]One payment on the embedded EVM[/bold] (balances: change since start)")
    walk.run(lambda step: show(_step_table(step, walk.ASSET.format_amount)))


def _step_table(step: walk.Step, fmt: Callable[[int], str]) -> Table:
    table = Table(
        title=f"{step.name}: {step.gas_used:,} gas", title_justify="left", show_header=False
    )
    table.add_row(
        "payment", f"capturable {fmt(step.capturable)}, refundable {fmt(step.refundable)}"
    )
    for party, delta in step.balances.items():
        table.add_row(party, ("-" if delta < 0 else "+") + fmt(abs(delta)))
    return table
