"""Crash points between the pipeline's durable steps, for the crash-safety test.

A crash point wraps one method of a live engine component so that, once armed, its next call
raises ``WorkerKilled`` at a chosen place: before the wrapped call (nothing of it happens),
or after it (its effect is durable but the caller never learns of it). Raised inside a SQL
transaction, the exception rolls that transaction back, as a killed process would. The test
then throws the engine objects away and builds new ones on the same database and chain.

Wrapping is per instance, so a restarted engine starts unwrapped until ``install`` is called
on it again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from engine.pipeline.engine import SettlementEngine


class WorkerKilled(BaseException):
    """The worker died here. A BaseException, so no ``except Exception`` in the engine can
    swallow it and carry on as a real crash would not."""


class When(StrEnum):
    BEFORE = "before"
    AFTER = "after"


@dataclass(frozen=True)
class CrashPoint:
    name: str
    target: Callable[[SettlementEngine], object]  # the component whose method is wrapped
    method: str
    when: When


# Each point names the durable step that has (after) or has not (before) happened.
CRASH_POINTS = (
    # A command's transaction dies after writing its events, its row and its outbox row, before
    # it commits.
    CrashPoint("command_after_enqueue", lambda e: e.service._outbox, "enqueue_many", When.AFTER),
    # The relay claimed rows (committed) and dies before submitting them.
    CrashPoint("relay_after_claim", lambda e: e.relay, "_send", When.BEFORE),
    # The tx manager recorded the batch's transaction; the relay never starts watching it.
    CrashPoint("relay_after_tx_submit", lambda e: e.txmanager, "submit", When.AFTER),
    # The transaction is confirmed; completing the outbox rows rolls back.
    CrashPoint("relay_during_completion", lambda e: e.outbox, "complete_many", When.BEFORE),
    # An attempt is signed and stored, never broadcast.
    CrashPoint("txm_after_sign", lambda e: e.txmanager, "_signed", When.AFTER),
    # The attempt is broadcast; the acknowledgement is never recorded.
    CrashPoint("txm_after_broadcast", lambda e: e.txmanager, "_record_broadcast", When.BEFORE),
    # The tx manager settled what was mined, then dies before repairing and sending.
    CrashPoint("txm_after_settle", lambda e: e.txmanager, "_repair", When.BEFORE),
    # The indexer stored a poll (its own transaction); the mirror never applies it.
    CrashPoint("indexer_after_poll", lambda e: e.indexer, "poll", When.AFTER),
    # The mirror wrote events, projection and ledger entries; its commit never happens.
    CrashPoint("mirror_before_commit", lambda e: e.indexer, "acknowledge", When.BEFORE),
)
CRASH_POINT_NAMES = tuple(point.name for point in CRASH_POINTS)
COMMAND_CRASH_POINT = "command_after_enqueue"  # hit by a command's caller, not the worker loop
WORKER_CRASH_POINT_NAMES = tuple(name for name in CRASH_POINT_NAMES if name != COMMAND_CRASH_POINT)
_BY_NAME = {point.name: point for point in CRASH_POINTS}


class Crasher:
    """Arms one crash point at a time on the engine it was installed on."""

    def __init__(self) -> None:
        self.armed: str | None = None
        self.fired: list[str] = []

    def install(self, engine: SettlementEngine) -> None:
        for point in CRASH_POINTS:
            component = point.target(engine)
            original = getattr(component, point.method)
            setattr(component, point.method, self._wrap(point, original))

    def arm(self, name: str) -> None:
        assert name in _BY_NAME, name
        self.armed = name

    def disarm(self) -> None:
        self.armed = None

    def _wrap(self, point: CrashPoint, original: Callable[..., Any]) -> Callable[..., Any]:
        def crashing(*args: Any, **kwargs: Any) -> Any:
            if self.armed != point.name:
                return original(*args, **kwargs)
            self.armed = None
            self.fired.append(point.name)
            if point.when is When.BEFORE:
                raise WorkerKilled(point.name)
            original(*args, **kwargs)
            raise WorkerKilled(point.name)

        return crashing
