"""`settle outbox list|retry`: the operations the engine owes the chain, and putting a dead
letter back in the queue.

The list is laid out for an 80-column terminal: one operation per two lines, the full op id
first (`outbox retry` takes it), times as UTC dates.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Annotated, Final

import typer

from engine.cli.options import DEFAULT_DB_URL, DbUrl, JsonFlag, group
from engine.cli.render import escape, json_out, show
from engine.store.db import open_database, open_migrated
from engine.store.outbox import Outbox, OutboxRow, parse_status

# The most rows `settle outbox list` prints; it says when there are more.
CLI_ROWS_MAX: Final = 1_000

app = group("Inspect and replay the outbox.")


@app.command("list")
def outbox_list(
    db: DbUrl = DEFAULT_DB_URL,
    status: Annotated[
        str | None, typer.Option("--status", help="pending, in_flight, completed or dead.")
    ] = None,
    as_json: JsonFlag = False,
) -> None:
    """Outbox operations, oldest first, with the relay's lag."""
    raise typer.Exit(cmd_outbox_list(db, status, as_json))


@app.command("retry")
def outbox_retry(
    op_id: Annotated[str, typer.Argument(help="The dead letter's operation id.")],
    db: DbUrl = DEFAULT_DB_URL,
) -> None:
    """Put a dead-lettered operation back in the queue."""
    raise typer.Exit(cmd_outbox_retry(db, op_id))


def cmd_outbox_list(db_url: str, status: str | None, as_json: bool) -> int:
    wanted = None if status is None else parse_status(status)
    database = open_migrated(db_url)
    try:
        with database.snapshot() as conn:
            store = Outbox(database)
            rows = store.list_rows(conn, wanted, CLI_ROWS_MAX + 1)
            lag = store.lag(conn, int(time.time()))
    finally:
        database.dispose()
    truncated = len(rows) > CLI_ROWS_MAX
    rows = rows[:CLI_ROWS_MAX]
    if as_json:
        json_out(
            {
                "operations": [row.to_dict() for row in rows],
                "truncated": truncated,
                "lag": lag.to_dict(),
            }
        )
        return 0
    show(f"[bold]outbox: {escape(status or 'all')} operations, oldest first[/bold]")
    for row in rows:
        show(*_lines(row))
    if truncated:
        show(f"[yellow]only the first {CLI_ROWS_MAX} are shown[/yellow]")
    show(
        f"{lag.pending} pending, {lag.in_flight} in flight, {lag.dead} dead; "
        f"oldest undelivered due {lag.oldest_pending_age_s} s ago"
    )
    return 0


def cmd_outbox_retry(db_url: str, op_id: str) -> int:
    database = open_database(db_url, create=False)
    try:
        with database.transaction() as conn:
            row = Outbox(database).retry(conn, op_id, int(time.time()))
    finally:
        database.dispose()
    show(f"{escape(row.op_id)} ({escape(row.kind)} of {escape(row.payment_key)}) is pending again")
    return 0


def _lines(row: OutboxRow) -> tuple[str, ...]:
    attempts = f"{row.attempts} attempt{'s' if row.attempts != 1 else ''}"
    first = f"{escape(row.op_id)}  {escape(row.kind)}  {row.status.value}, {attempts}"
    second = f"  {escape(row.payment_key)}  available {_date(row.available_at)}"
    error = (f"  [red]{escape(row.last_error)}[/red]",) if row.last_error else ()
    return (first, second, *error)


def _date(unix_s: int) -> str:
    return datetime.fromtimestamp(unix_s, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
