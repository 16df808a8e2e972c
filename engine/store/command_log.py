"""Reads of the command log (``payment_commands``): the accepted payment commands under their
idempotency keys, which the command service answers retries from and which tell it a payment
has a command on its way to the chain.

Look-ups are chunked so that no statement binds more parameters than a backend takes.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum
from typing import Final, NamedTuple

from sqlalchemy import Connection, select

from engine.store.db import one_of
from engine.store.schema import COMMAND_STATUSES, payment_commands

# Keys (or payment ids) one look-up binds: inside every backend's parameter limit.
KEYS_PER_QUERY_MAX: Final = 500


class CommandStatus(StrEnum):
    ACCEPTED = "accepted"  # its escrow operation is on its way
    APPLIED = "applied"
    FAILED = "failed"


if tuple(CommandStatus) != COMMAND_STATUSES:
    raise AssertionError("CommandStatus and schema.COMMAND_STATUSES disagree")


class StoredCommand(NamedTuple):
    kind: str
    request: str  # canonical JSON of the command's arguments
    outcome: str  # canonical JSON returned to the caller


class OpenCommand(NamedTuple):
    idempotency_key: str
    kind: str


def commands_by_key(conn: Connection, keys: Sequence[str]) -> dict[str, StoredCommand]:
    """The commands stored under any of ``keys``, by key."""
    c = payment_commands.c
    found: dict[str, StoredCommand] = {}
    unique = sorted(set(keys))
    for first in range(0, len(unique), KEYS_PER_QUERY_MAX):
        rows = conn.execute(
            select(c.idempotency_key, c.kind, c.request, c.outcome).where(
                one_of(conn, c.idempotency_key, unique[first : first + KEYS_PER_QUERY_MAX])
            )
        )
        found.update(
            (row.idempotency_key, StoredCommand(row.kind, row.request, row.outcome)) for row in rows
        )
    return found


def open_commands(conn: Connection, payment_ids: Sequence[str]) -> dict[str, OpenCommand]:
    """The accepted command of each of ``payment_ids`` that has one (one at a time), by
    payment id."""
    c = payment_commands.c
    found: dict[str, OpenCommand] = {}
    for first in range(0, len(payment_ids), KEYS_PER_QUERY_MAX):
        chunk = payment_ids[first : first + KEYS_PER_QUERY_MAX]
        rows = conn.execute(
            select(c.payment_id, c.idempotency_key, c.kind).where(
                one_of(conn, c.payment_id, chunk), c.status == CommandStatus.ACCEPTED
            )
        )
        found.update((row.payment_id, OpenCommand(row.idempotency_key, row.kind)) for row in rows)
    return found
