"""``notify`` and ``Wakeup``: a worker waiting for work hears of it when the transaction that
made it commits, not before and not if it rolls back; with nobody to wake (SQLite) a wait is
the plain pause it was."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text

from engine.store.db import Database, Wakeup, notify

# Long enough that a notification on its way is not missed, short enough for a test that
# expects none to come.
WAIT_S = 0.3


@pytest.fixture
def channel() -> str:
    """A channel of this test's own: notifications go to the whole server."""
    return f"test_{uuid.uuid4().hex}"


def test_a_committed_notification_wakes_the_waiter_once(
    database: Database, db_url: str, channel: str
) -> None:
    wakeup = Wakeup(db_url, [channel])
    try:
        assert not wakeup.wait(0)  # listening from here on
        with database.transaction() as conn:
            notify(conn, channel)

        woken = wakeup.wait(WAIT_S)
        again = wakeup.wait(WAIT_S)
    finally:
        wakeup.close()

    assert (woken, again) == (database.dialect == "postgresql", False)


def test_a_rolled_back_notification_wakes_nobody(
    database: Database, db_url: str, channel: str
) -> None:
    wakeup = Wakeup(db_url, [channel])
    try:
        assert not wakeup.wait(0)
        with pytest.raises(RuntimeError), database.transaction() as conn:
            notify(conn, channel)
            conn.execute(text("SELECT 1"))
            raise RuntimeError("the command failed after it asked to notify")

        assert not wakeup.wait(WAIT_S)
    finally:
        wakeup.close()


def test_other_channels_do_not_wake_the_waiter(
    database: Database, db_url: str, channel: str
) -> None:
    wakeup = Wakeup(db_url, [channel])
    try:
        assert not wakeup.wait(0)
        with database.transaction() as conn:
            notify(conn, channel + "_other")

        assert not wakeup.wait(WAIT_S)
    finally:
        wakeup.close()
