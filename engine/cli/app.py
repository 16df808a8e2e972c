"""`settle`: the command line of the settlement engine.

Every error a user can cause (a wrong --db, an unreachable RPC, a bad argument) prints one
line `error[code]: message` on stderr and exits 2. Exit 1 is kept for the verdicts commands
report: reconcile found a mismatch, audit found an altered event, replay differs, contracts
check found drift. Reporting commands take `--json` for machines.
"""

from __future__ import annotations

from importlib.metadata import version
from typing import Annotated, Any

import typer
from typer._click import Context
from typer.core import TyperGroup

from engine.cli import (
    audit,
    bench,
    chain,
    chain_check,
    contracts,
    db,
    demo,
    deploy,
    gas,
    outbox,
    reconcile,
    replay,
)
from engine.cli.errors import user_error_code
from engine.cli.render import error, show

DISTRIBUTION = "atomic-settlement-engine"


class SettleGroup(TyperGroup):
    """The one error path: the engine's typed errors, raised anywhere below a command, become
    one `error[code]: message` line and exit 2 (bugs keep their traceback)."""

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except Exception as raised:
            code = user_error_code(raised)
            if code is None:
                raise
            error(code, str(raised))
            raise typer.Exit(2) from None


app = typer.Typer(
    cls=SettleGroup,
    no_args_is_help=True,
    add_completion=False,
    help=__doc__,
    rich_markup_mode=None,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(asked: bool) -> None:
    if asked:
        show(f"settle {version(DISTRIBUTION)}")
        raise typer.Exit()


@app.callback()
def settle(
    _version: Annotated[
        bool,
        typer.Option(
            "--version", is_eager=True, callback=_print_version, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """`settle`: the command line of the settlement engine."""


app.add_typer(contracts.app, name="contracts")
app.add_typer(db.app, name="db")
app.add_typer(audit.app, name="audit")
app.add_typer(chain.app, name="chain")
app.add_typer(outbox.app, name="outbox")
app.add_typer(bench.app, name="bench")
app.command("deploy")(deploy.deploy)
app.command("reconcile")(reconcile.reconcile)
app.command("replay")(replay.replay)
app.command("chain-check")(chain_check.chain_check)
app.command("gas-report")(gas.gas_report)
app.command("demo")(demo.demo)
app.command("walkthrough")(demo.walkthrough)


def main() -> None:
    app()
