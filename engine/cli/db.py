"""`settle db upgrade|bind`: create and migrate the engine's database, and tie it to the chain
and escrow whose payments it will hold."""

from __future__ import annotations

import time
from typing import Annotated

import typer

from engine.chain.binding import bind as bind_database
from engine.chain.deployment import load_deployment
from engine.chain.networks import get_network
from engine.cli.chain_access import connected_chain
from engine.cli.options import DEFAULT_DB_URL, DbUrl, RpcUrl, group
from engine.cli.render import escape, show
from engine.store.db import open_migrated, upgrade

app = group("Create, migrate and bind the engine's database.")


@app.command("upgrade")
def db_upgrade(db: DbUrl = DEFAULT_DB_URL) -> None:
    """Create the database if it is missing (a SQLite file and its folder, or a PostgreSQL
    database on its server) and migrate it to the latest schema."""
    upgrade(db)
    show("[green]database at the latest schema[/green]")


@app.command("bind")
def db_bind(
    network: Annotated[
        str, typer.Option("--network", help="embedded, anvil, sepolia, base-sepolia, ...")
    ],
    db: DbUrl = DEFAULT_DB_URL,
    rpc_url: RpcUrl = None,
    escrow: Annotated[
        str | None,
        typer.Option("--escrow", help="Escrow address (default: from deployments/CHAIN_ID.json)."),
    ] = None,
) -> None:
    """Bind a migrated database to a chain and its escrow, so that `settle reconcile` can
    check it; a no-op when it is already bound to exactly that."""
    get_network(network)  # an unknown name fails before the database is opened
    database = open_migrated(db)
    try:
        with connected_chain(network, rpc_url, db) as w3:
            address = escrow or load_deployment(w3.eth.chain_id).escrow
            binding = bind_database(database, w3, address, now=int(time.time()))
    finally:
        database.dispose()
    show(f"bound to {escape(binding.describe())}")
