"""Engine workers in processes of their own, sharing one PostgreSQL database and one JSON-RPC
node (anvil, or any network's).

One Python process runs on one core; the work of settling a payment splits cleanly into the
relay (outbox -> transaction manager -> chain) and the mirror (indexer -> streams, projection
and ledger), which meet only in the database. Run apart, each takes a core while commands are
accepted by yet another process (the API's, or the bench's shop), as DESIGN §6 scales out.

Workers are started with the ``spawn`` method: a forked child would share the parent's open
database and HTTP connections. A step that fails for a passing reason (the node or the database
did not answer, another writer won a race) is taken again after a doubling pause: every
component keeps its state in the database and resolves what a cut-short step left (a send
whose answer was lost is looked up, a mirror transaction rolled back is delivered again). Any
other error, or a passing one that lasts past ``FAILURES_IN_A_ROW_MAX`` tries, ends the worker,
and a worker that dies takes the run down with it (``WorkerFailed``) rather than leaving a
pipeline that silently stops settling.
"""

from __future__ import annotations

import logging
import multiprocessing
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Final

from eth_account import Account
from sqlalchemy.exc import OperationalError
from web3 import HTTPProvider

from engine.chain.backends import RpcBackend
from engine.chain.deployment import Deployment
from engine.chain.errors import RpcUnavailable
from engine.chain.networks import get_network
from engine.chain.txmanager.manager import SENT_CHANNEL
from engine.pipeline.engine import (
    BlockProducer,
    D,
    Role,
    SagaFactory,
    SettlementEngine,
    SignedDeployment,
    Signers,
)
from engine.store.db import Wakeup
from engine.store.event_store import ConcurrencyConflict
from engine.store.outbox import OUTBOX_CHANNEL

# How long an idle worker waits before looking again, unless woken: short next to a posting-lag
# budget of a second, long enough that two idle workers leave the cores to the database and
# the node. Under load idle steps come alone or in short runs; past IDLE_STEPS_AT_FIRST_WAIT of
# them in a row (a tenth of a second with nothing to do) the wait doubles up to
# IDLE_WAIT_S_LAST, so an idle engine looks five times a second instead of a hundred (it burned
# 0.43 of a core doing so). Work that arrives wakes the worker at once (``WAKE_CHANNELS``), and
# the short waits start over.
IDLE_WAIT_S: Final = 0.01
IDLE_WAIT_S_LAST: Final = 0.2
IDLE_STEPS_AT_FIRST_WAIT: Final = 10
READY_TIMEOUT_S: Final = 60.0
STOP_TIMEOUT_S: Final = 10.0
# The pause after a step failed for a passing reason doubles from the first to the last; the
# failures in a row a worker takes add up to about five minutes of a node or database away.
RETRY_WAIT_S_FIRST: Final = 0.05
RETRY_WAIT_S_LAST: Final = 5.0
FAILURES_IN_A_ROW_MAX: Final = 70
PASSING_ERRORS: Final = (RpcUnavailable, OperationalError, ConcurrencyConflict)

# What wakes a worker of each role: operations enqueued, and the node taking transactions,
# whose logs the mirror reads. The sagas' timers and steps wait for the idle poll.
WAKE_CHANNELS: Final = {Role.RELAY: OUTBOX_CHANNEL, Role.MIRROR: SENT_CHANNEL}

_log = logging.getLogger(__name__)


class WorkerFailed(RuntimeError):
    """A worker process exited or did not start: the pipeline it ran has stopped."""


@dataclass(frozen=True)
class SignerKeys:
    """The operator's and the arbiter's private keys, as a worker is handed them: an account
    object cannot be pickled. They travel only through the pipe of a spawned child, and are
    kept out of the spec's repr so that a logged spec shows no key."""

    operator: bytes = field(repr=False)
    arbiter: bytes = field(repr=False)

    @classmethod
    def of(cls, signers: Signers) -> SignerKeys:
        return cls(bytes(signers.operator.key), bytes(signers.arbiter.key))

    def signers(self) -> Signers:
        return Signers(Account.from_key(self.operator), Account.from_key(self.arbiter))


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker process needs to join a running deployment: all of it picklable.

    ``sagas`` and ``produce_blocks`` are pickled by name (a class or a module-level function);
    ``stuck_after_s`` is the parent's backend's, which a plain JSON-RPC backend cannot know
    (a local node's is far shorter than a public network's)."""

    db_url: str
    rpc_url: str
    deployment: Deployment
    keys: SignerKeys
    roles: frozenset[Role]
    stuck_after_s: int
    confirmations: int = 0
    sagas: SagaFactory | None = None
    produce_blocks: BlockProducer | None = None


def relay_and_mirror(
    engine: SettlementEngine[D],
    *,
    sagas: SagaFactory | None = None,
    produce_blocks: BlockProducer | None = None,
) -> list[WorkerSpec]:
    """Specs of a relay worker (which also drives ``sagas``, if given) and a mirror worker
    joining ``engine``'s database, node and deployment. ``produce_blocks``: a picklable block
    producer, for confirmations on a local node that mines only on demand."""
    provider = engine.backend.w3.provider
    if not isinstance(provider, HTTPProvider) or not provider.endpoint_uri:
        raise TypeError(
            "workers share a JSON-RPC node (anvil or a network's); "
            "the embedded EVM lives in one process"
        )
    url = engine.db.engine.url.render_as_string(hide_password=False)
    return [
        WorkerSpec(
            url,
            str(provider.endpoint_uri),
            engine.deployment.record,
            SignerKeys.of(engine.deployment.signers),
            roles,
            engine.stuck_after_s,
            engine.confirmations,
            sagas,
            produce_blocks,
        )
        for roles in (frozenset({Role.SAGAS, Role.RELAY}), frozenset({Role.MIRROR}))
    ]


def run_worker(spec: WorkerSpec, ready: Connection, stop: Connection) -> None:
    """Step an engine with ``spec.roles`` until ``stop`` (a pipe's read end) says so, by a
    message or by its writer closing; ``ready`` takes word once the engine is up."""
    backend = RpcBackend(spec.rpc_url, get_network(spec.deployment.network))
    engine = SettlementEngine(
        spec.db_url,
        backend,
        SignedDeployment(spec.deployment, spec.keys.signers()),
        confirmations=spec.confirmations,
        roles=spec.roles,
        sagas=spec.sagas,
        produce_blocks=spec.produce_blocks,
        stuck_after_s=spec.stuck_after_s,
    )
    roles = ", ".join(sorted(spec.roles))
    wakeup = Wakeup(
        spec.db_url, {WAKE_CHANNELS[role] for role in spec.roles if role in WAKE_CHANNELS}
    )
    failures = idle_steps = 0
    try:
        ready.send(True)
        ready.close()
        while not stop.poll():
            try:
                idle = engine.step().idle
            except PASSING_ERRORS as error:
                failures += 1
                if failures > FAILURES_IN_A_ROW_MAX:
                    raise
                wait_s = pause_s(failures, RETRY_WAIT_S_FIRST, RETRY_WAIT_S_LAST)
                _log.warning(
                    "%s worker: step failed (%s: %s); again in %.2f s",
                    roles,
                    type(error).__name__,
                    error,
                    wait_s,
                )
                stop.poll(wait_s)
                continue
            failures = 0
            idle_steps = idle_steps + 1 if idle else 0
            if idle:
                wait_s = pause_s(
                    idle_steps, IDLE_WAIT_S, IDLE_WAIT_S_LAST, IDLE_STEPS_AT_FIRST_WAIT
                )
                if wakeup.wait(wait_s):
                    idle_steps = 0  # work is coming: look again soon until it is here
    finally:
        wakeup.close()
        engine.close()


def pause_s(count: int, first_s: float, last_s: float, flat: int = 0) -> float:
    """The pause after the ``count``-th idle or failed step in a row: ``first_s`` for the
    first ``flat + 1`` of them, then doubling, never above ``last_s``."""
    assert count >= 1 and flat >= 0 and 0 < first_s <= last_s, (count, flat, first_s, last_s)
    doublings = min(max(0, count - 1 - flat), 32)
    return min(last_s, first_s * 2**doublings)


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
    way out (terminating one that does not stop in time).

    Workers hear "ready" and "stop" through pipes, not shared events: a worker killed while
    it waited on an event's lock would leave the lock held, and every other process that
    touched the event after it would hang (the test that kills a worker once did)."""
    context = multiprocessing.get_context("spawn")
    stop, stop_writer = context.Pipe(duplex=False)
    started: list[tuple[BaseProcess, Connection]] = []
    try:
        for spec in specs:
            ready, ready_writer = context.Pipe(duplex=False)
            process = context.Process(
                target=run_worker,
                args=(spec, ready_writer, stop),
                name=f"settle-{'-'.join(spec.roles)}",
            )
            process.start()
            ready_writer.close()  # the worker has its own: its end closes when it exits
            started.append((process, ready))
        workers = Workers([process for process, _ in started], specs)
        deadline = time.monotonic() + READY_TIMEOUT_S
        for _, ready in started:
            while not ready.poll(0.1):
                workers.check()
                if time.monotonic() > deadline:
                    raise WorkerFailed(f"a worker was not ready within {READY_TIMEOUT_S} s")
            try:
                ready.recv()
            except EOFError:  # it exited before its engine was up
                workers.check()
                raise WorkerFailed("a worker exited before it was ready") from None
        yield workers
    finally:
        stop_writer.close()  # every worker's stop.poll() now returns True
        for child, _ in started:
            child.join(STOP_TIMEOUT_S)
            if child.is_alive():
                child.terminate()
                child.join()
