"""`settle replay --verify`: rebuild ledger and projections from the events, compare to live."""

from __future__ import annotations

from typing import Annotated

import typer

from engine.cli.options import DEFAULT_DB_URL, DbUrl, JsonFlag
from engine.cli.render import error, escape, json_out, show
from engine.store.db import open_migrated
from engine.store.replay import DIFFERENCES_SHOWN_MAX, verify_replay


def replay(
    db: DbUrl = DEFAULT_DB_URL,
    verify: Annotated[
        bool, typer.Option("--verify", help="Rebuild into scratch tables and compare.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Rebuild ledger and projections from the event store; with --verify, compare to live
    (exit 1 when they differ)."""
    raise typer.Exit(cmd_replay(db, verify, as_json))


def cmd_replay(db_url: str, verify: bool, as_json: bool) -> int:
    """0 when replay equals live, 1 if not."""
    if not verify:
        error("verify_required", "replay only verifies for now: pass --verify")
        return 2
    database = open_migrated(db_url)
    try:
        report = verify_replay(database)
    finally:
        database.dispose()
    if as_json:
        json_out(report.to_json())
    else:
        verdict = "identical" if report.identical else "DIFFERENT"
        show(f"{report.events} events replayed into {report.entries} entries: {verdict}")
        for difference in report.differences[:DIFFERENCES_SHOWN_MAX]:
            show(f"  {escape(difference)}")
    return 0 if report.identical else 1
