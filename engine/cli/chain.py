"""`settle chain up|down`: a local anvil in the background, for deploying and running against."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.chain.backends.anvil import DEFAULT_PORT, DEFAULT_STATE_DIR
from engine.chain.networks import ANVIL_CHAIN_ID
from engine.cli.options import group
from engine.cli.render import show
from engine.tools.chain_process import LOG_FILE_NAME, chain_down, chain_up

app = group("Run a local anvil chain in the background.")


@app.command("up")
def up(
    port: Annotated[int, typer.Option("--port", min=1, max=65535)] = DEFAULT_PORT,
    chain_id: Annotated[
        int,
        typer.Option(
            "--chain-id",
            min=1,
            help="Any id; `settle deploy --network anvil` takes the one served.",
        ),
    ] = ANVIL_CHAIN_ID,
    block_time: Annotated[
        float | None,
        typer.Option(
            "--block-time",
            min=0.001,
            help="Seconds, fractions too (0.5); default: per transaction.",
        ),
    ] = None,
) -> None:
    """Start anvil in the background (state in var/anvil.json) and print its URL."""
    raise typer.Exit(cmd_chain_up(port, chain_id, block_time))


@app.command("down")
def down() -> None:
    """Stop the anvil that `settle chain up` started."""
    raise typer.Exit(cmd_chain_down())


def cmd_chain_up(
    port: int = DEFAULT_PORT, chain_id: int = ANVIL_CHAIN_ID, block_time: float | None = None
) -> int:
    """0 whether started or found already running."""
    chain, started = chain_up(port=port, chain_id=chain_id, block_time_s=block_time)
    mining = f"a block every {chain.block_time_s:g} s" if chain.block_time_s else "automine"
    verb = "started" if started else "already running:"
    show(
        f"anvil {verb} chain id {chain.chain_id}, {mining}, pid {chain.pid} "
        f"(log: {DEFAULT_STATE_DIR / LOG_FILE_NAME})",
        chain.url,
    )
    return 0


def cmd_chain_down() -> int:
    """0 whether a chain was stopped or none was running."""
    chain = chain_down()
    if chain is None:
        show("no chain is running (nothing started by `settle chain up`)")
    else:
        show(f"stopped anvil at {chain.url} (pid {chain.pid})")
    return 0
