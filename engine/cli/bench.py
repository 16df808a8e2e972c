"""`settle bench chain|core`: throughput figures, as ratios measured in one run."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli.options import JsonFlag, group
from engine.cli.render import json_out, progress_per, show
from engine.tools import bench_chain, bench_core

app = group("Benchmarks (ratios measured in one run).")


@app.command("chain")
def chain(as_json: JsonFlag = False) -> None:
    """Escrow operations per second on anvil: a plain web3.py loop, the tx manager, batches."""
    result = bench_chain.measure()
    if as_json:
        json_out(result)
        return
    naive = result["naive_ops_per_s"]
    for name, value in result.items():
        show(f"{name:<27} {value:>10.1f}   {value / naive:>6.1f} x naive")


@app.command("core")
def core(
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
    count = bench_core.PAYMENTS_DEFAULT if payments is None else payments
    window = bench_core.IN_FLIGHT_DEFAULT if in_flight is None else in_flight
    bench_core.require_postgresql(db or bench_core.POSTGRES_URL_DEFAULT)
    if as_json:
        json_out(bench_core.measure(count, db, window, single_process=single_process))
        return
    backends = (bench_core.ANVIL_POSTGRESQL, bench_core.EMBEDDED_SQLITE)
    with progress_per(backends, count) as settled:
        result = bench_core.measure(
            count, db, window, single_process=single_process, settled=settled
        )
    for name, figures in result["backends"].items():
        show(
            f"{name:<18} {figures['payments_per_s']:>9.1f} payments/s   "
            f"posting lag p99 {figures['posting_lag_p99_s']:.3f} s"
        )
