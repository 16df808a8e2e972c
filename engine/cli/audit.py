"""`settle audit verify`: recompute every stream's hash chain."""

from __future__ import annotations

from typing import Any

import typer

from engine.cli.options import DEFAULT_DB_URL, DbUrl, JsonFlag, group
from engine.cli.render import escape, json_out, show
from engine.store.db import open_migrated
from engine.store.event_store import EventStore

app = group("Check the event store's integrity.")


@app.command("verify")
def verify(db: DbUrl = DEFAULT_DB_URL, as_json: JsonFlag = False) -> None:
    """Recompute every stream's hash chain; exit 1 if any event was altered."""
    database = open_migrated(db)
    try:
        with database.snapshot() as conn:
            result = EventStore(database).verify(conn)
    finally:
        database.dispose()
    if as_json:
        report: dict[str, Any] = {
            "ok": result.ok,
            "streams": result.streams,
            "events": result.events,
        }
        if result.first_bad is not None:
            report["first_bad"] = result.first_bad._asdict()
        json_out(report)
    else:
        verdict = (
            "[green]intact[/green]"
            if result.ok
            else f"[red]broken: {escape(str(result.first_bad))}[/red]"
        )
        show(f"{result.streams} streams, {result.events} events: {verdict}")
    if not result.ok:
        raise typer.Exit(1)
