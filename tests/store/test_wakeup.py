"""``notify`` and ``Wakeup``: a worker waiting for work hears of it when the transaction that
made it commits, not before and not if it rolls back; with nobody to wake (SQLite) a wait is
the plain pause it was."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

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


def needs_notifications(database: Database) -> None:
    """SQLite has no notifications: a wait there can only time out, so a test that nothing
    wakes the waiter would pass whatever the code did."""
    if database.dialect != "postgresql":
        pytest.skip("notifications are PostgreSQL's; on SQLite a wait is a plain pause")


@pytest.fixture
def wakeup(database: Database, db_url: str, channel: str) -> Iterator[Wakeup]:
    """A waiter already listening on ``channel``."""
    waiter = Wakeup(db_url, [channel])
    assert not waiter.wait(0)  # connects and listens
    yield waiter
    waiter.close()


def test_a_committed_notification_wakes_the_waiter_once(
    database: Database, wakeup: Wakeup, channel: str
) -> None:
    with database.transaction() as conn:
        notify(conn, channel)

    woken, again = wakeup.wait(WAIT_S), wakeup.wait(WAIT_S)

    assert (woken, again) == (database.dialect == "postgresql", False)


def test_a_rolled_back_notification_wakes_nobody(
    database: Database, wakeup: Wakeup, channel: str
) -> None:
    needs_notifications(database)
    with pytest.raises(RuntimeError), database.transaction() as conn:
        notify(conn, channel)
        conn.execute(text("SELECT 1"))
        raise RuntimeError("the command failed after it asked to notify")

    assert not wakeup.wait(WAIT_S)


def test_other_channels_do_not_wake_the_waiter(
    database: Database, wakeup: Wakeup, channel: str
) -> None:
    needs_notifications(database)
    with database.transaction() as conn:
        notify(conn, channel + "_other")

    assert not wakeup.wait(WAIT_S)
