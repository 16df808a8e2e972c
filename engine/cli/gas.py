"""`settle gas-report`: gas of every escrow operation, from real receipts on anvil."""

from __future__ import annotations

from rich.table import Table

from engine.cli.options import JsonFlag
from engine.cli.render import escape, json_out, progress, show
from engine.tools.gas_report import (
    BASELINE,
    BATCH_TARGET_PER_PAYMENT,
    GasReport,
    measure,
    within_targets,
)


def gas_report(as_json: JsonFlag = False) -> None:
    """Gas of every escrow operation, from real receipts on anvil."""
    if as_json:
        json_out(measure())
        return
    with progress("gas report", None) as update:
        report = measure(lambda step: update(description=step))
    show(_table(report))
    misses = within_targets(report)
    show("[green]every target met[/green]" if not misses else f"[red]{escape(str(misses))}[/red]")


def _table(report: GasReport) -> Table:
    table = Table(title="SettlementEscrow gas (anvil, cancun, 100 TUSD, 1% fee)")
    for column in ("operation", "gas", "baseline", "saved"):
        table.add_column(column, justify="left" if column == "operation" else "right")
    for name, gas in report["operations"].items():
        baseline = BASELINE.get(name)
        saved = f"{100 - 100 * gas / baseline:.1f}%" if baseline else "-"
        table.add_row(name, f"{gas:,}", f"{baseline:,}" if baseline else "-", saved)
    for size, gas in report["batch_capture_per_payment"].items():
        target = f"<= {BATCH_TARGET_PER_PAYMENT:,}" if "netted" in size else "-"
        table.add_row(f"batch capture, per payment: {size}", f"{gas:,}", target, "")
    return table
