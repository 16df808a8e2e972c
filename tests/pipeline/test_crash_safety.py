"""Crash safety: random commands and worker steps, the worker killed between durable steps.

A Hypothesis state machine issues payment commands, steps the engine, kills it at one of the
crash points of ``crash_points`` and restarts it (new engine objects on the same database and
chain, the old relay's leases left to run out), and on anvil reorganises the chain no deeper
than the confirmation depth. After every step the books are sound: every entry balances, the
trial balance is zero, the event log's hash chains hold. Once the engine is quiescent: the
ledger's escrow account equals the escrow's token balance, every payment's books equal its
on-chain state, no acknowledged command is lost, no chain effect was applied or booked twice,
and replaying the events gives the live projection and ledger.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, TypeVar

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import create_engine, select, text
from web3.types import RPCEndpoint

from engine.chain.backends import AnvilBackend, ChainBackend, EmbeddedBackend
from engine.domain.errors import DomainError
from engine.domain.events import Party
from engine.domain.payment import Payment
from engine.ops.reconcile import ChainTarget, reconcile
from engine.pipeline.commands import CommandError, CommandOutcome
from engine.pipeline.engine import NotQuiescent, SettlementEngine
from engine.store.db import normalise_url
from engine.store.event_store import EventStore
from engine.store.ledger import Ledger
from engine.store.projections import chain_steps, load, load_all
from engine.store.replay import domain_event
from engine.store.schema import outbox, payment_commands
from engine.tools.localnet import UNIT, LocalDeployment, deploy_local, local_engine
from tests.fixtures.pipeline_support import assert_books_match_chain
from tests.pipeline.crash_points import (
    COMMAND_CRASH_POINT,
    CRASH_POINT_NAMES,
    WORKER_CRASH_POINT_NAMES,
    Crasher,
    WorkerKilled,
)

AMOUNTS = st.integers(1, 50).map(lambda units: units * UNIT)
FEE_BPS = st.sampled_from([0, 50, 300])
# Capture or refund the whole remainder (1), or a part of it.
PARTS = st.sampled_from([1, 2, 3])
PICK_MAX = 8  # the index rules draw to choose among the payments made so far
QUIESCE_ROUNDS_MAX = 8
QUIESCE_STEPS_MAX = 40
ANVIL_CONFIRMATIONS = 2
T = TypeVar("T")
PHASE_STEPS = 4
DEPLOYMENT_BURIAL_BLOCKS = 10


@dataclass(frozen=True)
class Acknowledged:
    """A command whose caller got an outcome: it must reach a final state."""

    key: str
    outcome: CommandOutcome


def empty_database(db_url: str) -> None:
    """Make ``db_url`` empty again, so each Hypothesis example starts on a fresh database."""
    url = normalise_url(db_url)
    if url.get_backend_name() == "sqlite":
        for suffix in ("", "-wal", "-shm", "-journal"):
            Path(f"{url.database}{suffix}").unlink(missing_ok=True)
        return
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            schema = conn.execute(text("SELECT current_schema()")).scalar_one()
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    finally:
        admin.dispose()


class CrashMachine(RuleBasedStateMachine):
    db_url: ClassVar[str]
    world: ClassVar[LocalDeployment]
    confirmations: ClassVar[int] = 0
    reorgs: ClassVar[bool] = False

    def __init__(self) -> None:
        super().__init__()
        empty_database(self.db_url)
        self.backend: ChainBackend = self.world.backend
        self.chain_token = self.backend.snapshot()
        self.crasher = Crasher()
        self.engine = self._start()
        self.payments: list[str] = []
        self.acknowledged: list[Acknowledged] = []
        self.keys = 0

    # ── the worker ──────────────────────────────────────────────────────────────────────

    def _start(self) -> SettlementEngine:
        engine = local_engine(
            self.db_url, self.backend, self.world, confirmations=self.confirmations
        )
        self.crasher.install(engine)
        return engine

    def _restart(self) -> None:
        """Throw the worker away and start another. The old one's leases must run out before
        its claimed rows can be claimed again; the engine's clock follows the chain's."""
        self.crasher.disarm()
        self.engine.close()
        self.engine = self._start()
        self.backend.increase_time(self.engine.outbox.policy.lease_s + 1)

    def _survive(self, action: Callable[[], T]) -> T | None:
        try:
            return action()
        except WorkerKilled:
            self._restart()
            return None

    # ── commands ────────────────────────────────────────────────────────────────────────

    def _key(self) -> str:
        self.keys += 1
        return f"cmd-{self.keys}"

    def _command(self, call: Callable[[str], CommandOutcome]) -> None:
        key = self._key()
        try:
            outcome = self._survive(lambda: call(key))
        except (CommandError, DomainError):
            return  # refused: nothing written, nothing owed
        if outcome is None:  # the worker died inside the command: the caller got no answer
            with self.engine.db.snapshot() as conn:
                row = conn.execute(
                    select(payment_commands.c.op_id).where(
                        payment_commands.c.idempotency_key == key
                    )
                ).first()
            assert row is None, f"a command that died half-way left its row: {key}"
            return
        self.acknowledged.append(Acknowledged(key, outcome))
        if outcome.command == "create":
            self.payments.append(outcome.payment_id)
        assert call(key) == outcome, "a retried command must return the first outcome"

    def _pick(self, index: int) -> str:
        return self.payments[index % len(self.payments)]

    def _projected(self, payment_id: str) -> Payment:
        with self.engine.db.snapshot() as conn:
            found = load(conn, payment_id)
        assert found is not None, payment_id
        return found.payment

    @initialize(amounts=st.lists(AMOUNTS, min_size=1, max_size=3))
    def authorized_payments(self, amounts: list[int]) -> None:
        for amount in amounts:
            self.create(amount, crash=False)
        self.engine.run_until_quiescent()

    @rule(amount=AMOUNTS, crash=st.sampled_from([False, False, False, True]))
    def create(self, amount: int, crash: bool) -> None:
        terms = self.world.terms(amount)
        signature = self.world.payer_signature(terms)
        if crash:
            self.crasher.arm(COMMAND_CRASH_POINT)
        self._command(lambda key: self.engine.service.create(key, terms, amount, signature))
        if crash:
            self.crasher.disarm()

    @precondition(lambda self: self.payments)
    @rule(index=st.integers(0, PICK_MAX), part=PARTS, fee_bps=FEE_BPS)
    def capture(self, index: int, part: int, fee_bps: int) -> None:
        payment_id = self._pick(index)
        amount = max(self._projected(payment_id).capturable // part, 1)
        self._command(lambda key: self.engine.service.capture(key, payment_id, amount, fee_bps))

    @precondition(lambda self: self.payments)
    @rule(index=st.integers(0, PICK_MAX))
    def void(self, index: int) -> None:
        payment_id = self._pick(index)
        self._command(lambda key: self.engine.service.void(key, payment_id))

    @precondition(lambda self: self.payments)
    @rule(index=st.integers(0, PICK_MAX), part=PARTS)
    def refund(self, index: int, part: int) -> None:
        payment_id = self._pick(index)
        amount = max(self._projected(payment_id).refundable // part, 1)
        self._command(lambda key: self.engine.service.refund(key, payment_id, amount))

    @precondition(lambda self: self.payments)
    @rule(index=st.integers(0, PICK_MAX), part=PARTS)
    def open_dispute(self, index: int, part: int) -> None:
        payment_id = self._pick(index)
        amount = max(self._projected(payment_id).refundable // part, 1)
        self._command(lambda key: self.engine.service.open_dispute(key, payment_id, amount))

    @precondition(lambda self: self.payments)
    @rule(index=st.integers(0, PICK_MAX), winner=st.sampled_from(Party))
    def resolve_dispute(self, index: int, winner: Party) -> None:
        payment_id = self._pick(index)
        self._command(lambda key: self.engine.service.resolve_dispute(key, payment_id, winner))

    # ── the worker loop ─────────────────────────────────────────────────────────────────

    @rule()
    def step(self) -> None:
        self._survive(self.engine.step)

    @rule(point=st.sampled_from(WORKER_CRASH_POINT_NAMES), steps=st.integers(1, 3))
    def step_and_crash(self, point: str, steps: int) -> None:
        """Step with a crash armed; the worker restarts where it dies, or anyway at the end,
        as a kill at a moment when it held nothing in memory."""
        self.crasher.arm(point)
        for _ in range(steps):
            try:
                self.engine.step()
            except WorkerKilled:
                break
        self._restart()

    @precondition(lambda self: self.reorgs)
    @rule(depth=st.integers(1, ANVIL_CONFIRMATIONS))
    def reorg_under_a_fresh_batch(self, depth: int) -> None:
        """Send what is owed, let the mirror book it pending, then replace the newest blocks:
        the batch's transaction leaves the chain and its pending entries must be voided."""

        def partial_step() -> None:
            self.engine.relay.step()
            self.engine.txmanager.pump()
            self.engine.mirror.step()

        self._survive(partial_step)
        if self.backend.w3.eth.block_number > depth:
            self.backend.w3.manager.request_blocking(RPCEndpoint("anvil_reorg"), [depth, []])

    # ── invariants ──────────────────────────────────────────────────────────────────────

    @invariant()
    def every_entry_balances_and_the_log_is_intact(self) -> None:
        with self.engine.db.snapshot() as conn:
            audit = Ledger().verify(conn)
            assert audit.ok, audit.problems
            for asset, balance in Ledger().trial_balance(conn).items():
                assert (balance.posted, balance.pending) == (0, 0), (asset, balance)
            assert EventStore(self.engine.db).verify(conn).ok

    def teardown(self) -> None:
        try:
            self._restart()  # what the quiescent state is checked on: a fresh worker
            self._quiesce()
            self._check_quiescent()
        finally:
            self.engine.close()
            self.backend.revert(self.chain_token)

    def _quiesce(self) -> None:
        """Run until nothing is owed; a retry waiting out its backoff gets the clock moved."""
        for _ in range(QUIESCE_ROUNDS_MAX):
            try:
                self.engine.run_until_quiescent(QUIESCE_STEPS_MAX)
                return
            except NotQuiescent:
                self.backend.increase_time(self.engine.outbox.policy.lease_s + 1)
        raise NotQuiescent(f"not quiescent after {QUIESCE_ROUNDS_MAX} rounds")

    def _check_quiescent(self) -> None:
        engine = self.engine
        assert_books_match_chain(engine)  # escrow balance, chain views, audit, replay
        target = ChainTarget(self.backend.w3, engine.chain_id, self.world.escrow.address)
        report = reconcile(engine.db, target, now=engine.now())
        assert report.mismatched == 0, report.to_json()
        with engine.db.snapshot() as conn:
            commands = {row.idempotency_key: row for row in conn.execute(select(payment_commands))}
            rows = {row.op_id: row for row in conn.execute(select(outbox))}
            projected = {item.payment.id: item for item in load_all(conn)}
            store = EventStore(engine.db)
            streams = {pid: store.read(conn, pid) for pid in projected}
        for acknowledged in self.acknowledged:
            command = commands.get(acknowledged.key)
            assert command is not None, f"acknowledged command lost: {acknowledged}"
            assert command.op_id == acknowledged.outcome.op_id
            assert command.status in ("applied", "failed"), (acknowledged, command.status)
            assert rows[command.op_id].status in ("completed", "dead"), acknowledged
        assert {c.idempotency_key for c in commands.values()} == {
            a.key for a in self.acknowledged
        }, "a command nobody was told about was accepted"
        for payment_id, item in projected.items():
            applied = [c for c in commands.values() if c.payment_id == payment_id]
            applied_count = sum(1 for c in applied if c.status == "applied")
            facts = [event for event in map(domain_event, streams[payment_id]) if event]
            # One chain operation per applied command: a duplicate on chain would advance the
            # sequence further, a duplicate booking would add a sequenced event.
            assert item.chain_seq == chain_steps(facts) == applied_count, (
                payment_id,
                item.chain_seq,
                [f.kind for f in facts],
                [(c.kind, c.status) for c in applied],
            )


def crash_machine(
    db_url: str, world: LocalDeployment, *, confirmations: int, reorgs: bool
) -> type[CrashMachine]:
    class OnThisChain(CrashMachine):
        pass

    OnThisChain.db_url = db_url
    OnThisChain.world = world
    OnThisChain.confirmations = confirmations
    OnThisChain.reorgs = reorgs
    return OnThisChain


def run_crash_machine(
    db_url: str,
    world: LocalDeployment,
    *,
    confirmations: int,
    reorgs: bool,
    max_examples: int,
    steps: int,
) -> None:
    run_state_machine_as_test(
        crash_machine(db_url, world, confirmations=confirmations, reorgs=reorgs),
        settings=settings(max_examples=max_examples, stateful_step_count=steps, deadline=None),
    )


@pytest.fixture(scope="module")
def embedded_world() -> Iterator[LocalDeployment]:
    with EmbeddedBackend() as backend:
        yield deploy_local(backend)


@pytest.fixture(scope="module")
def anvil_world(anvil_binary: Path) -> Iterator[LocalDeployment]:
    with AnvilBackend.launch() as backend:
        world = deploy_local(backend)
        # Bury the deployment below any reorg the machine makes (its depth <= confirmations).
        backend.mine(DEPLOYMENT_BURIAL_BLOCKS)
        yield world


def test_a_worker_killed_between_durable_steps_loses_and_repeats_nothing(
    db_url: str, embedded_world: LocalDeployment
) -> None:
    run_crash_machine(
        db_url, embedded_world, confirmations=0, reorgs=False, max_examples=10, steps=20
    )


@pytest.mark.anvil
def test_crashes_and_shallow_reorgs_on_anvil_keep_the_books_equal_to_the_chain(
    anvil_world: LocalDeployment, tmp_path: Path
) -> None:
    run_crash_machine(
        f"sqlite:///{tmp_path / 'settle.db'}",
        anvil_world,
        confirmations=ANVIL_CONFIRMATIONS,
        reorgs=True,
        max_examples=10,
        steps=20,
    )


@pytest.mark.parametrize("point", CRASH_POINT_NAMES)
def test_a_worker_killed_at_each_crash_point_loses_and_repeats_nothing(
    point: str, embedded_world: LocalDeployment, tmp_path: Path
) -> None:
    """Every crash point is hit at least once, whatever Hypothesis happens to draw."""
    machine = crash_machine(
        f"sqlite:///{tmp_path / 'settle.db'}", embedded_world, confirmations=0, reorgs=False
    )()
    try:
        for phase in range(3):
            machine.crasher.arm(point)
            if phase == 0:
                machine.create(50 * UNIT, crash=False)
                machine.create(30 * UNIT, crash=False)
            elif machine.payments and phase == 1:
                machine.capture(0, 2, 50)
                machine.void(1)
            elif machine.payments:
                machine.refund(0, 2)
            for _ in range(PHASE_STEPS):
                machine.step()
        assert point in machine.crasher.fired
    finally:
        machine.teardown()


@pytest.mark.parametrize("point", CRASH_POINT_NAMES)
@pytest.mark.parametrize("winner", list(Party))
def test_a_dispute_opened_and_resolved_across_a_crash_is_applied_once(
    point: str, winner: Party, embedded_world: LocalDeployment, tmp_path: Path
) -> None:
    """The arbiter's calls go through every crash point like the batches do."""
    machine = crash_machine(
        f"sqlite:///{tmp_path / 'settle.db'}", embedded_world, confirmations=0, reorgs=False
    )()
    try:
        machine.create(50 * UNIT, crash=False)
        machine._quiesce()
        machine.capture(0, 1, 50)
        machine._quiesce()
        for command, status in (
            (lambda: machine.open_dispute(0, 2), "disputed"),
            (lambda: machine.resolve_dispute(0, winner), f"dispute_{_OUTCOME[winner]}"),
        ):
            machine.crasher.arm(point)
            command()
            if point == COMMAND_CRASH_POINT:
                command()  # the caller got no answer and asks again; the first wrote nothing
            for _ in range(PHASE_STEPS):
                machine.step()
            machine.crasher.disarm()
            machine._quiesce()
            assert machine._projected(machine.payments[0]).status == status
        assert point in machine.crasher.fired
    finally:
        machine.teardown()


# The merchant's side of a dispute the winner closes.
_OUTCOME = {Party.MERCHANT: "won", Party.PAYER: "lost"}


@pytest.mark.slow
def test_a_long_run_of_crashes_loses_and_repeats_nothing(
    db_url: str, embedded_world: LocalDeployment
) -> None:
    run_crash_machine(
        db_url, embedded_world, confirmations=0, reorgs=False, max_examples=100, steps=50
    )


@pytest.mark.slow
@pytest.mark.anvil
def test_a_long_run_of_crashes_and_reorgs_on_anvil_loses_and_repeats_nothing(
    anvil_world: LocalDeployment, tmp_path: Path
) -> None:
    run_crash_machine(
        f"sqlite:///{tmp_path / 'settle.db'}",
        anvil_world,
        confirmations=ANVIL_CONFIRMATIONS,
        reorgs=True,
        max_examples=100,
        steps=50,
    )
