"""Options several command groups share, and the factory for a command group, so every
`--db`, `--json` and help page reads the same."""

from __future__ import annotations

from typing import Annotated, Final

import typer

DEFAULT_DB_URL: Final = "sqlite:///var/settle.db"
DEMO_DB_URL: Final = "sqlite:///var/demo.db"

DbUrl = Annotated[str, typer.Option("--db", envvar="SETTLE_DB", help="SQLite or PostgreSQL URL.")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
NetworkName = Annotated[
    str | None,
    typer.Option(
        "--network",
        help="embedded (the demo's chain, kept beside a SQLite --db), anvil, sepolia, ...",
    ),
]
RpcUrl = Annotated[
    str | None,
    typer.Option("--rpc-url", envvar="SETTLE_RPC_URL", help="JSON-RPC endpoint of the chain."),
]


def group(help_text: str) -> typer.Typer:
    """A command group. Help is plain text: Rich markup would eat `error[code]` and show
    `<bool>` beside flags."""
    return typer.Typer(no_args_is_help=True, help=help_text, rich_markup_mode=None)
