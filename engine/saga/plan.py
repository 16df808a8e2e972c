"""What flows and the orchestrator say to each other: a flow sees a ``SagaView`` and answers
with a ``Plan`` of ``Step``s and timers; the orchestrator persists and runs it.

These types sit apart from both so that flows are written against them alone: a flow never
reaches into the orchestrator, and the orchestrator knows flows only as ``Flow``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from engine.domain.payment import Payment
from engine.store.event_store import Json


class StepAction(StrEnum):
    """The payment command a step asks for: one per ``PaymentCommands`` method."""

    CREATE = "create"
    CAPTURE = "capture"
    VOID = "void"
    REFUND = "refund"
    OPEN_DISPUTE = "open_dispute"
    RESOLVE_DISPUTE = "resolve_dispute"


@dataclass(frozen=True, slots=True)
class Step:
    """One payment command a flow asks for, with its arguments."""

    action: StepAction
    args: Mapping[str, Json] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Plan:
    """A flow's answer to what happened: steps to append, timers to set, the context to keep,
    and ``finish`` (the saga's outcome) once nothing is left to do."""

    steps: Sequence[Step] = ()
    timers: Mapping[str, int] = field(default_factory=dict)
    cancel_timers: bool = False
    context: Mapping[str, Json] | None = None
    finish: str | None = None

    def __post_init__(self) -> None:
        assert not (self.steps and self.finish), "a finished saga runs no more steps"


@dataclass(frozen=True, slots=True)
class SagaView:
    """What a flow sees of its saga when it decides."""

    id: str
    context: Mapping[str, Json]
    payment: Payment | None


class Flow(Protocol):
    """A kind of saga: pure decisions from what happened to a ``Plan``, no I/O."""

    name: str

    def start(self, saga: SagaView) -> Plan: ...

    def on_step_done(self, saga: SagaView, step: Step) -> Plan: ...

    def on_signal(self, saga: SagaView, name: str, data: Mapping[str, Json]) -> Plan: ...

    def on_timer(self, saga: SagaView, name: str) -> Plan: ...

    def on_payment(self, saga: SagaView) -> Plan: ...

    def compensate(self, saga: SagaView, failed: Step) -> Plan: ...


class Sagas(Protocol):
    """How a saga is started and told of outside events (``Orchestrator``); flows' entry
    points take this rather than the orchestrator, which imports the flows."""

    def start(
        self, saga_id: str, flow: str, context: Mapping[str, Json], now: int | None = None
    ) -> bool: ...

    def signal(
        self,
        saga_id: str,
        signal_id: str,
        name: str,
        data: Mapping[str, Json],
        now: int | None = None,
    ) -> bool: ...


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How often and how far apart a failing step is retried, each count a bound."""

    attempts_max: int = 5
    backoff_base_s: int = 2
    backoff_max_s: int = 300
    compensation_attempts_max: int = 3

    def backoff_s(self, attempts: int) -> int:
        return int(min(self.backoff_max_s, self.backoff_base_s * 2 ** max(0, attempts - 1)))


def json_int(value: Json | None) -> int:
    """An integer a flow put in a saga's JSON (an amount, a margin); anything else is a bug."""
    assert isinstance(value, int) and not isinstance(value, bool), value
    return value


def json_mapping(value: Json | None) -> Mapping[str, Json]:
    """An object a flow put in a saga's JSON (payment terms); anything else is a bug."""
    assert isinstance(value, dict), value
    return value
