"""`settle bench core`: payments fully settled per second through the whole pipeline.

A payment counts once its authorization and its capture are both posted in the ledger, having
gone command → outbox → relay → tx manager → escrow → indexer → chain mirror. A shop keeps
``in_flight`` payments open at a time (0: all of them at once), starting a new checkout as one
settles; each payment is captured as soon as its authorization is posted, as a merchant
capturing on request would. The clock runs from the first command to the last posted capture,
so SQL bookkeeping, signing and the chain are all part of the price.

On anvil + PostgreSQL the pipeline runs as in production (``engine.pipeline.workers``): a relay
worker and a mirror worker in processes of their own, while this process is the shop, as the
API would be. ``single_process`` steps the whole engine here instead, as the embedded EVM must
(it lives inside the process).

posting_lag is the wall time from a capture command's acceptance to the shop's first look that
sees its ledger entry posted; the shop looks after every engine step, or every
``SHOP_POLL_S`` when workers run the engine. It looks by tailing the event log: the mirror
appends a payment's ``authorized`` and ``captured`` events in the same transaction as it posts
their ledger entries, and the log's positions grow in commit order, so each look reads only
what is new. Terms and payer signatures are made before the
clock starts: they are the payer's work.

PostgreSQL runs in a fresh schema of the given server, dropped afterwards.
"""

from __future__ import annotations

import math
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from engine.chain.backends import AnvilBackend, ChainBackend, EmbeddedBackend
from engine.chain.backends.anvil import AnvilConfig
from engine.pipeline.commands import (
    Capture,
    Command,
    CommandOutcome,
    Create,
    PaymentService,
    Refusal,
)
from engine.pipeline.engine import SettlementEngine
from engine.pipeline.workers import relay_and_mirror, running_workers
from engine.saga.orchestrator import Orchestrator
from engine.store.db import normalise_url, open_database, server_scratch_schema
from engine.store.event_store import kinds_after, last_position
from engine.store.redaction import redact_url
from engine.tools.localnet import UNIT, LocalDeployment, local_engine

PAYMENTS_DEFAULT: Final = 1000
# Payments open at once: about a second of checkouts at the target rate. Every engine step has
# a fixed cost (a mirror poll's statements and round trips, about 47 ms on anvil + PostgreSQL)
# that more payments per step share, while the capture lag stays well inside its second (the
# README's Throughput section has the figures for 300, 600 and all at once).
IN_FLIGHT_DEFAULT: Final = 600
# How often the shop looks for posted entries while workers run the engine.
SHOP_POLL_S: Final = 0.02
POSTGRES_URL_DEFAULT: Final = "postgresql://postgres@127.0.0.1:5432/test"
AMOUNT: Final = UNIT
FEE_BPS: Final = 50
STEPS_MAX: Final = 100_000
# Commands one call carries, as a merchant's batch request or the API's grouped commits would.
COMMANDS_PER_BATCH: Final = 500


ANVIL_POSTGRESQL: Final = "anvil+postgresql"
EMBEDDED_SQLITE: Final = "embedded+sqlite"


@dataclass(frozen=True)
class Load:
    """What a run offers the pipeline: ``payments`` checkouts, at most ``in_flight`` of them
    open at once (0: all), and ``settled``, told how many more settled after each look (a
    progress bar's advance)."""

    payments: int
    in_flight: int = IN_FLIGHT_DEFAULT
    settled: Callable[[int], object] = lambda count: None

    def __post_init__(self) -> None:
        assert self.payments > 0 and self.in_flight >= 0, self


class BenchNeedsPostgresql(ValueError):
    """`--db` names something other than a PostgreSQL server: the anvil run measures several
    workers sharing one PostgreSQL, in schemas it creates and drops there."""

    code = "bench_needs_postgresql"


def require_postgresql(server_url: str) -> None:
    """Refuses a URL that is not a PostgreSQL server answering, before anything starts."""
    if normalise_url(server_url).get_backend_name() != "postgresql":
        raise BenchNeedsPostgresql(
            f"bench core needs a PostgreSQL server, not {redact_url(server_url)}: pass "
            "--db postgresql://USER@HOST:PORT/DB (the embedded run uses SQLite by itself)"
        )
    open_database(server_url, create=False).dispose()  # DatabaseUnreachable, DatabaseMissing


class NotSettled(RuntimeError):
    """The pipeline stopped with payments not fully settled: a bench figure would be a lie."""


@dataclass(frozen=True)
class CoreFigures:
    payments: int
    seconds: float
    lags_s: tuple[float, ...]

    @property
    def payments_per_s(self) -> float:
        return self.payments / self.seconds

    @property
    def posting_lag_p99_s(self) -> float:
        ordered = sorted(self.lags_s)
        return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]

    def to_dict(self) -> dict[str, float]:
        return {
            "payments_per_s": round(self.payments_per_s, 1),
            "posting_lag_p99_s": round(self.posting_lag_p99_s, 3),
        }


def settle_payments(
    engine: SettlementEngine[LocalDeployment],
    load: Load,
    advance: Callable[[], object] | None = None,
) -> CoreFigures:
    """Settle the ``load``'s payments, capturing each once authorized. ``advance`` moves the
    pipeline on between two looks at the ledger: one engine step (the default), or a short
    wait while worker processes run the engine."""
    payments = load.payments
    world = engine.deployment
    service = engine.service
    terms = [world.terms(AMOUNT) for _ in range(payments)]
    signatures = [world.payer_signature(item) for item in terms]
    creates = [
        Create(f"bench-create-{index}", item, AMOUNT, signature)
        for index, (item, signature) in enumerate(zip(terms, signatures, strict=True))
    ]
    window = load.in_flight or payments
    step = advance or engine.step
    booked = _Bookings(engine)
    started = time.perf_counter()
    to_authorize: set[str] = set()
    to_capture: dict[str, float] = {}
    lags: list[float] = []
    for _ in range(STEPS_MAX):
        room = max(0, window - len(to_authorize) - len(to_capture))
        arriving, creates = creates[:room], creates[room:]
        if not (arriving or to_authorize or to_capture):
            break
        to_authorize.update(_submitted(service, arriving))
        step()
        authorized, captured = booked.since_last_look()
        seen = time.perf_counter()
        captured_lags = [seen - to_capture.pop(pid) for pid in captured if pid in to_capture]
        if captured_lags:
            lags.extend(captured_lags)
            load.settled(len(captured_lags))
        authorized &= to_authorize
        to_authorize -= authorized
        captures = [
            Capture(f"bench-capture-{payment_id}", payment_id, AMOUNT, FEE_BPS)
            for payment_id in sorted(authorized)
        ]
        accepted = _submitted(service, captures)
        to_capture.update(dict.fromkeys(accepted, time.perf_counter()))
    else:
        raise NotSettled(
            f"{len(to_authorize)} not authorized, {len(to_capture)} not captured "
            f"after {STEPS_MAX} rounds"
        )
    return CoreFigures(payments, time.perf_counter() - started, tuple(lags))


def _submitted(service: PaymentService, commands: Sequence[Command]) -> list[str]:
    """The payments of ``commands``, sent in batches; a refusal here is a bug, not a figure."""
    accepted: list[str] = []
    for first in range(0, len(commands), COMMANDS_PER_BATCH):
        accepted += _accepted(service.execute(commands[first : first + COMMANDS_PER_BATCH]))
    return accepted


def _accepted(results: list[CommandOutcome | Refusal]) -> list[str]:
    """The payments of accepted commands; a refusal here is a bug, not a figure."""
    refused = [result for result in results if not isinstance(result, CommandOutcome)]
    if refused:
        raise NotSettled(f"{len(refused)} commands refused, the first: {refused[0]}")
    return [result.payment_id for result in results if isinstance(result, CommandOutcome)]


class _Bookings:
    """Payments whose authorization or capture was booked since the last look, read from the
    tail of the event log."""

    def __init__(self, engine: SettlementEngine[LocalDeployment]) -> None:
        self._db = engine.db
        with self._db.snapshot() as conn:
            self._after = last_position(conn)

    def since_last_look(self) -> tuple[set[str], set[str]]:
        found: dict[str, set[str]] = {"authorized": set(), "captured": set()}
        with self._db.snapshot() as conn:
            rows = kinds_after(conn, self._after, list(found))
        for row in rows:
            found[row.kind].add(row.stream_id)
            self._after = max(self._after, row.position)
        return found["authorized"], found["captured"]


def bench_backend(db_url: str, backend: ChainBackend, load: Load) -> CoreFigures:
    """The whole engine stepped in this process."""
    engine = local_engine(db_url, backend, sagas=Orchestrator)
    try:
        return settle_payments(engine, load)
    finally:
        engine.close()


def settle_with_workers(shop: SettlementEngine[LocalDeployment], load: Load) -> CoreFigures:
    """``settle_payments`` with a relay worker (driving the sagas) and a mirror worker in
    processes of their own; ``shop`` (an engine with no roles) only accepts commands and
    watches the ledger."""
    with running_workers(relay_and_mirror(shop, sagas=Orchestrator)) as workers:

        def wait() -> None:
            workers.check()
            time.sleep(SHOP_POLL_S)

        return settle_payments(shop, load, wait)


def bench_with_workers(db_url: str, backend: AnvilBackend, load: Load) -> CoreFigures:
    shop = local_engine(db_url, backend, roles=frozenset())
    try:
        return settle_with_workers(shop, load)
    finally:
        shop.close()


def bench_anvil_postgresql(
    server_url: str, load: Load, *, single_process: bool = False
) -> CoreFigures:
    with (
        server_scratch_schema(server_url, "bench") as url,
        AnvilBackend.launch(AnvilConfig()) as backend,
    ):
        if single_process:
            return bench_backend(url, backend, load)
        return bench_with_workers(url, backend, load)


def bench_embedded_sqlite(load: Load) -> CoreFigures:
    with tempfile.TemporaryDirectory() as tmp, EmbeddedBackend() as backend:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        return bench_backend(url, backend, load)


Report = dict[str, dict[str, dict[str, float]]]


def to_report(runs: Mapping[str, CoreFigures]) -> Report:
    return {"backends": {name: figures.to_dict() for name, figures in runs.items()}}


def measure(
    payments: int,
    db_url: str | None,
    in_flight: int = IN_FLIGHT_DEFAULT,
    *,
    single_process: bool = False,
    settled: Callable[[str, int], object] = lambda backend, count: None,
) -> Report:
    """Both backends, one after the other (they would share the machine's two cores);
    ``settled`` hears each backend's progress."""

    def load(backend: str) -> Load:
        return Load(payments, in_flight, lambda count: settled(backend, count))

    server_url = db_url or POSTGRES_URL_DEFAULT
    require_postgresql(server_url)
    return to_report(
        {
            ANVIL_POSTGRESQL: bench_anvil_postgresql(
                server_url,
                load(ANVIL_POSTGRESQL),
                single_process=single_process,
            ),
            EMBEDDED_SQLITE: bench_embedded_sqlite(load(EMBEDDED_SQLITE)),
        }
    )
