"""`settle audit verify` against a real database: intact, then tampered."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from sqlalchemy import text

from engine.store.db import Database
from engine.store.event_store import EventStore, NewEvent

SETTLE = Path(sys.executable).with_name("settle")


def audit(db_url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SETTLE), "audit", "verify", "--db", db_url, "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_audit_verify_reports_counts_then_the_tampered_event(
    db_url: str, database: Database, event_store: EventStore
) -> None:
    with database.transaction() as conn:
        for stream in ("pay_a", "pay_b"):
            event_store.append(
                conn,
                stream,
                0,
                [NewEvent("authorized", {"amount": n}, occurred_at=n) for n in (1, 2)],
            )

    result = audit(db_url)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == {"ok": True, "streams": 2, "events": 4}

    with database.transaction() as conn:
        conn.execute(
            text("UPDATE events SET payload = :payload WHERE version = 2"),
            {"payload": '{"amount":7}'},
        )
    result = audit(db_url)
    assert result.returncode == 1
    report = json.loads(result.stdout)
    assert report["ok"] is False
    assert report["first_bad"]["version"] == 2
