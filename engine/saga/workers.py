"""Engine workers in processes of their own, sharing one PostgreSQL database and one anvil node.

One Python process runs on one core; the work of settling a payment splits cleanly into the
relay (outbox -> transaction manager -> chain) and the mirror (indexer -> streams, projection
and ledger), which meet only in the database. Run apart, each takes a core while commands are
accepted by yet another process (the API's, or the bench's shop), as DESIGN §6 scales out.

Workers are started with the ``spawn`` method: a forked child would share the parent's open
database and HTTP connections. A worker that dies takes the run down with it
(``WorkerFailed``) rather than leaving a pipeline that silently stops settling.
"""

from __future__ import annotations

import multiprocessing
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from multiprocessing.process import BaseProcess
from multiprocessing.synchronize import Event
from typing import Final

from engine.chain.anvil import AnvilConfig, AnvilProcess
from engine.chain.backends import AnvilBackend
from engine.chain.localnet import attach_local
from engine.saga.engine import Role, SettlementEngine

# How long an idle worker waits before looking again: short next to a posting-lag budget of a
# second, long enough that two idle workers leave the cores to the database and the node.
IDLE_WAIT_S: Final = 0.01
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0


class WorkerFailed(RuntimeError):
    """A worker process exited or did not start: the pipeline it ran has stopped."""


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to join a running deployment: all of it picklable."""

    db_url: str
    anvil_port: int
    anvil: AnvilConfig
    escrow: str
    token: str
    roles: frozenset[Role]
    confirmations: int = 0


def relay_and_mirror(engine: SettlementEngine) -> list[WorkerSpec]:
    """Specs of a relay worker (which also drives sagas) and a mirror worker joining
    ``engine``'s database and its deployment on anvil."""
    backend = engine.backend
    if not isinstance(backend, AnvilBackend):
        raise TypeError("workers share an anvil node; the embedded EVM lives in one process")
    escrow, token = engine.deployment.escrow.address, engine.deployment.token.address
    url = engine.db.engine.url.render_as_string(hide_password=False)
    port, config = backend.process.port, backend.process.config
    return [
        WorkerSpec(url, port, config, escrow, token, roles, engine.confirmations)
        for roles in (frozenset({Role.SAGAS, Role.RELAY}), frozenset({Role.MIRROR}))
    ]


def run_worker(spec: WorkerSpec, ready: Event, stop: Event) -> None:
    """Step an engine with ``spec.roles`` until ``stop`` is set (a worker process's target)."""
    backend = AnvilBackend(AnvilProcess.started_elsewhere(spec.anvil_port, spec.anvil))
    engine = SettlementEngine(
        spec.db_url,
        backend,
        attach_local(backend, spec.escrow, spec.token),
        confirmations=spec.confirmations,
        roles=spec.roles,
    )
    try:
        ready.set()
        while not stop.is_set():
            if engine.step().idle:
                stop.wait(IDLE_WAIT_S)
    finally:
        engine.close()


class Workers:
    """Running worker processes; ``check`` raises once any of them has died."""

    def __init__(self, processes: Sequence[BaseProcess], specs: Sequence[WorkerSpec]) -> None:
        self.processes = processes
        self._specs = specs

    def check(self) -> None:
        for process, spec in zip(self.processes, self._specs, strict=True):
            if not process.is_alive():
                roles = ", ".join(sorted(spec.roles))
                raise WorkerFailed(f"the {roles} worker exited with code {process.exitcode}")


@contextmanager
def running_workers(specs: Sequence[WorkerSpec]) -> Iterator[Workers]:
    """Start a process per spec, wait until each has its engine up, and stop them all on the
    way out (terminating one that does not stop in time)."""
    context = multiprocessing.get_context("spawn")
    stop = context.Event()
    started: list[tuple[BaseProcess, Event]] = []
    try:
        for spec in specs:
            ready = context.Event()
            process = context.Process(
                target=run_worker, args=(spec, ready, stop), name=f"settle-{'-'.join(spec.roles)}"
            )
            process.start()
            started.append((process, ready))
        workers = Workers([process for process, _ in started], specs)
        deadline = time.monotonic() + READY_TIMEOUT_S
        for _, ready in started:
            while not ready.wait(0.1):
                workers.check()
                if time.monotonic() > deadline:
                    raise WorkerFailed(f"a worker was not ready within {READY_TIMEOUT_S} s")
        yield workers
    finally:
        stop.set()
        for child, _ in started:
            child.join(STOP_TIMEOUT_S)
            if child.is_alive():
                child.terminate()
                child.join()
