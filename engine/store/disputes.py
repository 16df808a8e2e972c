"""Who funded each payment's open dispute, as its stream recorded it.

The escrow's ``DisputeResolved`` log says who won, not who it paid: a merchant's win pays the
freeze back to whoever funded the dispute, which only the ``DisputeOpened`` log (and so the
stored event) named. The chain mirror asks here when a resolution arrives in a later poll than
the dispute it closes.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from typing import Final

from sqlalchemy import Connection, select

from engine.domain.events import DisputeOpened
from engine.store.db import one_of
from engine.store.schema import events

# Keeps one statement's bound ids modest; a caller with more is served in chunks.
PAYMENTS_PER_QUERY_MAX: Final = 500


def open_dispute_funders(conn: Connection, payment_ids: Collection[str]) -> dict[str, str | None]:
    """The funder named by each payment's latest ``DisputeOpened`` event, by payment id (None
    for an event stored before events named their funder); payments with none are left out."""
    funders: dict[str, str | None] = {}
    ordered = sorted(payment_ids)
    for first in range(0, len(ordered), PAYMENTS_PER_QUERY_MAX):
        chunk = ordered[first : first + PAYMENTS_PER_QUERY_MAX]
        rows = conn.execute(
            select(events.c.stream_id, events.c.payload)
            .where(events.c.kind == DisputeOpened.kind, one_of(conn, events.c.stream_id, chunk))
            .order_by(events.c.stream_id, events.c.version)
        )
        for row in rows:
            funder = json.loads(row.payload).get("funder")
            funders[row.stream_id] = funder if isinstance(funder, str) else None
    return funders
