"""The settlement engine: commands, relay, transaction manager, indexer and chain mirror wired
onto one database and one escrow deployment, stepped by one loop (with sagas, if given).

Every component keeps its state in the database, so a new engine over the same database and
chain continues where a stopped one left off, and the work can be split between processes by
role (``Role``): on PostgreSQL one process can relay commands to the chain while another
mirrors the chain into the books, each on its own core.

The engine settles through a deployment it is given and never deploys, and it never steers
the chain: what lives above the settlement path or only on local chains comes in from its
callers. Sagas arrive as a factory (``SagaFactory``; the orchestrator of engine.saga is one),
and a local chain's block production as a hook (``BlockProducer``; engine.tools.localnet
supplies both the deployment and the hook for local chains). engine.pipeline.composition
builds an engine from configuration and a deployment record.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Generic, Protocol, TypeVar

from eth_account.signers.local import LocalAccount

from engine.chain.backends import ChainBackend
from engine.chain.binding import bind
from engine.chain.contracts.compiler import load_artifact
from engine.chain.contracts.escrow import ESCROW_NAME
from engine.chain.deployment import Deployment
from engine.chain.indexer.log_indexer import Indexer
from engine.chain.txmanager.fees import FeePolicy
from engine.chain.txmanager.manager import SystemClock, TxManager, TxManagerConfig
from engine.pipeline.commands import PaymentService
from engine.pipeline.mirror import ChainMirror
from engine.pipeline.relay import Relay
from engine.store.db import Database, open_database, upgrade
from engine.store.outbox import Outbox

FEE_CAP_PER_GAS = 500 * 10**9  # local chains: far above their base fee, far below a signer's ETH
BLOCKS_PER_POLL_MAX = 500
# Nothing to do but wait for a retry's backoff: how long one idle step sleeps.
IDLE_SLEEP_S = 0.05


class Role(StrEnum):
    """A share of the loop's work that one process can take on."""

    SAGAS = "sagas"  # the orchestrator's timers and steps, which issue commands
    RELAY = "relay"  # outbox -> transaction manager -> chain (mining, on a local chain)
    MIRROR = "mirror"  # indexer -> payment streams, projection and ledger


ALL_ROLES: frozenset[Role] = frozenset(Role)


class NotQuiescent(RuntimeError):
    """The engine still had work after the steps it was given."""


@dataclass(frozen=True)
class Signers:
    """The keys the engine sends with: batches as the escrow's operator, dispute calls as its
    arbiter. One key may hold both roles; it then sends on one lane."""

    operator: LocalAccount
    arbiter: LocalAccount


class EscrowDeployment(Protocol):
    """What the engine needs of the deployment it settles through: the record of the escrow,
    and the keys of its operator and arbiter. Callers keep their own richer type (a local
    deployment with its parties and token) and find it again as ``engine.deployment``."""

    @property
    def record(self) -> Deployment: ...

    @property
    def signers(self) -> Signers: ...


@dataclass(frozen=True)
class SignedDeployment:
    """A recorded deployment and the keys this engine holds for it: what the composition root
    builds from a deployment record and a keystore or the environment."""

    record: Deployment
    signers: Signers


class SagaTick(Protocol):
    @property
    def idle(self) -> bool: ...


class SagaTicker(Protocol):
    """Multi-step flows driven from the loop: each tick fires due timers and takes due steps,
    issuing commands through the engine's service."""

    def tick(self, now: int) -> SagaTick: ...


# Builds the loop's sagas over the engine's database, command service and clock. A class or a
# module-level function, so that worker processes can be handed it (it is pickled by name).
SagaFactory = Callable[[Database, PaymentService, Callable[[], int]], SagaTicker]
# Produces ``blocks`` blocks now: a local chain's miner. On a real network blocks come anyway.
BlockProducer = Callable[[int], None]

D = TypeVar("D", bound=EscrowDeployment)


@dataclass
class StepReport:
    claimed: int
    submitted: int
    completed: int
    failed: int
    open_txs: int
    notices: int
    conflicts: int
    sagas_idle: bool = True

    @property
    def idle(self) -> bool:
        return (
            not (self.claimed or self.submitted or self.completed or self.failed)
            and not (self.open_txs or self.notices)
            and self.sagas_idle
        )


class SettlementEngine(Generic[D]):
    """Everything between a payment command and its posted ledger entries.

    Settles through ``deployment``. ``confirmations`` is the depth at which both the
    transaction manager and the indexer call a block final; ``produce_blocks``, if given,
    makes the blocks that takes while the relay waits (a local chain mines only on demand).
    ``roles`` are the parts of the work ``step`` does; at most one process may take
    ``Role.MIRROR`` (one indexer per escrow), and ``Role.SAGAS`` ticks the sagas ``sagas``
    builds (none: there is nothing to tick). ``stuck_after_s`` overrides the backend's own
    (a worker reaching a local node over plain JSON-RPC keeps the node's).
    """

    def __init__(
        self,
        db_url: str,
        backend: ChainBackend,
        deployment: D,
        *,
        confirmations: int = 0,
        worker_id: str | None = None,
        roles: frozenset[Role] = ALL_ROLES,
        sagas: SagaFactory | None = None,
        produce_blocks: BlockProducer | None = None,
        stuck_after_s: int | None = None,
    ) -> None:
        assert deployment.record.chain_id == backend.chain_id, (deployment.record, backend)
        upgrade(db_url)
        self.backend = backend
        self.db: Database = open_database(db_url)
        self.deployment = deployment
        self.confirmations = confirmations
        self.roles = roles
        self._produce_blocks = produce_blocks
        self.stuck_after_s = backend.stuck_after_s() if stuck_after_s is None else stuck_after_s
        signers = deployment.signers
        self.chain_id = backend.chain_id
        escrow = backend.w3.eth.contract(
            address=deployment.record.escrow, abi=load_artifact(ESCROW_NAME).abi
        )
        bind(self.db, backend.w3, escrow.address, now=self.now())
        self.service = PaymentService(self.db, self.chain_id, escrow.address, self.now)
        self.outbox = Outbox(self.db)
        self.txmanager = TxManager(
            self.db,
            backend.rpc,  # one connection for the clock and the transactions
            # The operator sends the batches, the arbiter the dispute calls: one lane each.
            [signers.operator, signers.arbiter],
            TxManagerConfig(
                self.chain_id,
                FeePolicy(max_fee_per_gas_cap=FEE_CAP_PER_GAS),
                confirmations=confirmations,
                stuck_after_s=self.stuck_after_s,
            ),
            SystemClock(),
        )
        worker = worker_id or f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
        self.relay = Relay(
            self.db,
            self.outbox,
            self.txmanager,
            escrow,
            worker,
            self.now,
            operator=signers.operator.address,
            arbiter=signers.arbiter.address,
        )
        self.indexer = Indexer(
            self.db,
            backend.w3,
            escrow.address,
            confirmations,
            BLOCKS_PER_POLL_MAX,
            start_block=backend.w3.eth.block_number,
        )
        self.mirror = ChainMirror(self.db, self.indexer, self.chain_id)
        self.sagas: SagaTicker | None = (
            None if sagas is None else sagas(self.db, self.service, self.now)
        )

    def now(self) -> int:
        """The engine's clock: never behind the chain's, so a command is judged no earlier
        than the block that will carry it. Read once per command batch and engine step."""
        return max(int(time.time()), self.backend.now())

    def step(self) -> StepReport:
        """One round of this engine's roles: sagas first (their commands then go out in the
        same round), then the relay and the transaction manager, then the mirror."""
        report = StepReport(0, 0, 0, 0, 0, 0, 0)
        if self.roles & {Role.SAGAS, Role.RELAY}:
            self._send(self.now(), report)  # one read of the chain's clock for the round
        if Role.MIRROR in self.roles:
            mirrored = self.mirror.step()
            report.notices, report.conflicts = mirrored.notices, mirrored.conflicts
        return report

    def _send(self, now: int, report: StepReport) -> None:
        if Role.SAGAS in self.roles and self.sagas is not None:
            report.sagas_idle = self.sagas.tick(now).idle
        if Role.RELAY in self.roles:
            relayed = self.relay.step(now)
            pumped = self.txmanager.pump()
            waiting = pumped.open or self.relay.busy
            if self.confirmations and waiting and self._produce_blocks is not None:
                self._produce_blocks(self.confirmations)
            report.claimed, report.submitted = relayed.claimed, relayed.submitted
            report.completed, report.failed = relayed.completed, relayed.failed
            report.open_txs = pumped.open

    def run_until_quiescent(self, max_steps: int = 200) -> int:
        """Step until no operation is owed, in flight or unbooked; returns the steps taken."""
        for steps in range(1, max_steps + 1):
            report = self.step()
            if report.idle and not self.relay.busy:
                with self.db.snapshot() as conn:
                    lag = self.outbox.lag(conn, self.now())
                if lag.pending == 0 and lag.in_flight == 0:
                    return steps
                time.sleep(IDLE_SLEEP_S)
        raise NotQuiescent(f"still busy after {max_steps} steps")

    def close(self) -> None:
        self.db.dispose()
