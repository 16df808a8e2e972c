"""`settle`: the command line of the settlement engine.

Every command that can fail because of its input prints one line `error[code]: message` and
exits 2; reporting commands take `--json` for machines and print Rich tables for people.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from functools import wraps
from pathlib import Path
from typing import Annotated, Any, ParamSpec, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from engine.chain.contracts import compiler
from engine.chain.errors import ChainBackendError, ChainError
from engine.domain.errors import DomainError
from engine.store.db import UnsupportedDatabase
from engine.store.event_store import StoreError

app = typer.Typer(no_args_is_help=True, add_completion=False, help=__doc__)
contracts_app = typer.Typer(no_args_is_help=True, help="Compile the Solidity contracts.")
app.add_typer(contracts_app, name="contracts")
db_app = typer.Typer(no_args_is_help=True, help="Create and migrate the engine's database.")
app.add_typer(db_app, name="db")
audit_app = typer.Typer(no_args_is_help=True, help="Check the event store's integrity.")
app.add_typer(audit_app, name="audit")
chain_app = typer.Typer(no_args_is_help=True, help="Run a local anvil chain in the background.")
app.add_typer(chain_app, name="chain")
outbox_app = typer.Typer(no_args_is_help=True, help="Inspect and replay the outbox.")
app.add_typer(outbox_app, name="outbox")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (ratios measured in one run).")
app.add_typer(bench_app, name="bench")
DEFAULT_DB_URL = "sqlite:///var/settle.db"
DEMO_DB_URL = "sqlite:///var/demo.db"
DbUrl = Annotated[str, typer.Option("--db", envvar="SETTLE_DB", help="SQLite or PostgreSQL URL.")]
console = Console()
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]

P = ParamSpec("P")
R = TypeVar("R")


def user_errors(command: Callable[P, R]) -> Callable[P, R]:
    """Turns the engine's typed errors into one clear line and exit code 2."""

    @wraps(command)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return command(*args, **kwargs)
        except (
            ChainError,
            ChainBackendError,
            DomainError,
            StoreError,
            UnsupportedDatabase,
        ) as error:
            print(f"error[{error.code}]: {error}", file=sys.stderr)
            raise typer.Exit(2) from None

    return run


@contracts_app.command("build")
def contracts_build() -> None:
    """Recompile contracts/ and write the checked-in artifacts."""
    raise typer.Exit(compiler.cmd_build())


@contracts_app.command("check")
def contracts_check() -> None:
    """Fail if the checked-in artifacts differ from what the sources compile to."""
    raise typer.Exit(compiler.cmd_check())


@db_app.command("upgrade")
@user_errors
def db_upgrade(db: DbUrl = DEFAULT_DB_URL) -> None:
    """Create the database (a SQLite file's folder too) and migrate it to the latest schema."""
    from engine.store.db import upgrade

    _ensure_sqlite_folder(db)
    upgrade(db)
    console.print("[green]database at the latest schema[/green]")


@audit_app.command("verify")
@user_errors
def audit_verify(db: DbUrl = DEFAULT_DB_URL, as_json: JsonFlag = False) -> None:
    """Recompute every stream's hash chain; exit 1 if any event was altered."""
    from engine.store.db import open_database
    from engine.store.event_store import EventStore

    database = open_database(db)
    try:
        with database.snapshot() as conn:
            result = EventStore(database).verify(conn)
    finally:
        database.dispose()
    report: dict[str, Any] = {"ok": result.ok, "streams": result.streams, "events": result.events}
    if result.first_bad is not None:
        report["first_bad"] = result.first_bad._asdict()
    if as_json:
        print(json.dumps(report))
    else:
        verdict = "[green]intact[/green]" if result.ok else f"[red]broken: {result.first_bad}[/red]"
        console.print(f"{result.streams} streams, {result.events} events: {verdict}")
    if not result.ok:
        raise typer.Exit(1)


def _ensure_sqlite_folder(url: str) -> None:
    from engine.store.db import normalise_url

    parsed = normalise_url(url)
    if parsed.drivername.startswith("sqlite") and parsed.database:
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)


@outbox_app.command("list")
@user_errors
def outbox_list(
    db: DbUrl = DEFAULT_DB_URL,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, in_flight, completed or dead.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Outbox operations, oldest first, with the relay's lag."""
    from engine.store.outbox import cmd_outbox_list

    raise typer.Exit(cmd_outbox_list(db, status, as_json))


@outbox_app.command("retry")
@user_errors
def outbox_retry(
    op_id: Annotated[str, typer.Argument(help="The dead letter's operation id.")],
    db: DbUrl = DEFAULT_DB_URL,
) -> None:
    """Put a dead-lettered operation back in the queue."""
    from engine.store.outbox import cmd_outbox_retry

    raise typer.Exit(cmd_outbox_retry(db, op_id))


@app.command("deploy")
@user_errors
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
    from engine.deploy.command import cmd_deploy

    raise typer.Exit(cmd_deploy(network, rpc_url, keystore, dry_run, as_json))


@chain_app.command("up")
@user_errors
def chain_up(
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = 8545,
    chain_id: Annotated[int, typer.Option("--chain-id", min=1)] = 31337,
    block_time: Annotated[
        int | None, typer.Option("--block-time", min=1, help="Seconds; default: per transaction.")
    ] = None,
) -> None:
    """Start anvil in the background (state in var/anvil.json)."""
    from engine.tools.chain_process import cmd_chain_up

    raise typer.Exit(cmd_chain_up(port, chain_id, block_time))


@chain_app.command("down")
@user_errors
def chain_down() -> None:
    """Stop the anvil that `settle chain up` started."""
    from engine.tools.chain_process import cmd_chain_down

    raise typer.Exit(cmd_chain_down())


@app.command("reconcile")
@user_errors
def reconcile(
    db: DbUrl = DEFAULT_DB_URL,
    rpc_url: Annotated[
        str | None, typer.Option("--rpc-url", envvar="SETTLE_RPC_URL", help="The bound chain.")
    ] = None,
    repair: Annotated[
        bool,
        typer.Option("--repair", help="Re-sync a mismatched payment's ledger from chain logs."),
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Compare ledger and chain per payment and per asset; exit 1 on any mismatch."""
    from engine.ops.reconcile import cmd_reconcile

    raise typer.Exit(cmd_reconcile(db, as_json, repair, rpc_url=rpc_url))


@app.command("replay")
@user_errors
def replay(
    db: DbUrl = DEFAULT_DB_URL,
    verify: Annotated[
        bool, typer.Option("--verify", help="Rebuild into scratch tables and compare.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild ledger and projections from the event store; with --verify, compare to live."""
    from engine.store.replay import cmd_replay

    raise typer.Exit(cmd_replay(db, verify, as_json))


@app.command("chain-check")
@user_errors
def chain_check(
    network: Annotated[str, typer.Option("--network", help="A local network: anvil.")] = "anvil",
    operations: Annotated[int, typer.Option("--operations", min=2, max=5000)] = 300,
    db: Annotated[
        str | None, typer.Option("--db", help="Database for the run (default: a temporary file).")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Run operations through the tx manager and indexer while injecting every chain fault."""
    from engine.tools.chain_check.command import cmd_chain_check

    raise typer.Exit(cmd_chain_check(network, as_json, operations, db))


@bench_app.command("chain")
@user_errors
def bench_chain(as_json: JsonFlag = False) -> None:
    """Escrow operations per second on anvil: a plain web3.py loop, the tx manager, batches."""
    from engine.tools.bench_chain import cmd_bench_chain

    raise typer.Exit(cmd_bench_chain(as_json))


@bench_app.command("core")
@user_errors
def bench_core(
    payments: Annotated[
        int | None, typer.Option("--payments", min=1, help="Payments per backend (default 1000).")
    ] = None,
    in_flight: Annotated[
        int | None,
        typer.Option(
            "--in-flight", min=0, help="Payments open at once (0: all of them; default 600)."
        ),
    ] = None,
    single_process: Annotated[
        bool,
        typer.Option(
            "--single-process", help="Run the anvil pipeline in one process, not in workers."
        ),
    ] = False,
    db: Annotated[
        str | None,
        typer.Option("--db", help="PostgreSQL server URL (default: the local test server)."),
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Payments per second settled end to end (authorize and capture posted), per backend."""
    from engine.tools.bench_core import cmd_bench_core

    raise typer.Exit(
        cmd_bench_core(as_json, payments, db, in_flight, single_process=single_process)
    )


@app.command("gas-report")
@user_errors
def gas_report(as_json: JsonFlag = False) -> None:
    """Gas of every escrow operation, from real receipts on anvil."""
    from engine.tools.gas_report import (
        BASELINE,
        BATCH_TARGET_PER_PAYMENT,
        measure,
        measure_with_progress,
        within_targets,
    )

    if as_json:
        print(json.dumps(measure()))
        return
    report = measure_with_progress()
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
    console.print(table)
    misses = within_targets(report)
    console.print("[green]every target met[/green]" if not misses else f"[red]{misses}[/red]")


@app.command("demo")
@user_errors
def demo(
    db: Annotated[str, typer.Option("--db", help="A fresh SQLite or PostgreSQL database.")] = (
        DEMO_DB_URL
    ),
    as_json: JsonFlag = False,
) -> None:
    """Settle a mix of payments end to end on the embedded EVM: commands, outbox, relay,
    escrow, indexer, ledger; then trial balance, reconciliation and audit."""
    from engine.tools.demo import cmd_demo_db

    _ensure_sqlite_folder(db)
    raise typer.Exit(cmd_demo_db(db, as_json))


@app.command("walkthrough")
@user_errors
def walkthrough(as_json: JsonFlag = False) -> None:
    """Walk one payment through the escrow on the embedded EVM, balances after each step."""
    from engine.tools import walkthrough

    if as_json:
        print(json.dumps({"steps": [step.to_dict() for step in walkthrough.run()]}))
        return
    console.print("[bold]One payment on the embedded EVM[/bold] (balances: change since start)")
    walkthrough.run(lambda step: console.print(_step_table(step, walkthrough.ASSET.format_amount)))


def _step_table(step: Any, fmt: Callable[[int], str]) -> Table:
    table = Table(
        title=f"{step.name}: {step.gas_used:,} gas", title_justify="left", show_header=False
    )
    table.add_row(
        "payment", f"capturable {fmt(step.capturable)}, refundable {fmt(step.refundable)}"
    )
    for party, delta in step.balances.items():
        table.add_row(party, ("-" if delta < 0 else "+") + fmt(abs(delta)))
    return table


def main() -> None:
    app()
