"""`settle chain-check`: escrow operations through the transaction manager on a fresh anvil,
with every fault the manager and the indexer must survive injected on the way, then a count of
how often each operation took effect on the canonical chain.

What runs, in rounds at the check's own pace (one process, one thread):

* Operations (engine.tools.chain_check.workload). Authorizations arrive spread over about
  ARRIVAL_ROUNDS rounds, so faults land among them rather than after them; a capture arrives
  once the manager has confirmed its hold.
* Faults (engine.tools.chain_check.faults): one is due every round.
* The indexer reads the escrow's logs straight from the node (not through the fault proxy)
  and a consumer applies its notices in order.

The manager and the indexer confirm at REORG_DEPTH_MAX blocks, the deepest reorg injected: a
reorg of d blocks can only take back blocks with fewer than d blocks on top, which neither has
confirmed yet. That is the configuration under test, not a weakening of it.

After quiescence the check counts (engine.tools.chain_check.tally).
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from eth_account.signers.local import LocalAccount

from engine.chain.backends import AnvilBackend
from engine.chain.backends.anvil import AnvilConfig
from engine.chain.errors import RpcUnavailable
from engine.chain.indexer.log_indexer import Indexer, PollResult
from engine.chain.networks import ANVIL_CHAIN_ID
from engine.chain.rpc import HttpRpc
from engine.chain.txmanager.fees import FeePolicy
from engine.chain.txmanager.manager import TxManager, TxManagerConfig
from engine.store.db import Database, open_database, upgrade
from engine.store.escrow_logs import checkpoint_count
from engine.store.transactions import TxRecord, TxStatus, TxStore
from engine.tools.chain_check.errors import (
    ChainCheckDatabaseInUse,
    ChainCheckInvalidSize,
    ChainCheckStalled,
)
from engine.tools.chain_check.faults import REORG_DEPTH_MAX, FaultKind, FaultScheduler
from engine.tools.chain_check.tally import ChainCheckResult, LiveLogs, tally
from engine.tools.chain_check.workload import (
    OPERATIONS_DEFAULT,
    OPERATIONS_MAX,
    OPERATIONS_MIN,
    Operation,
    Payment,
    operator_lanes,
    plan_payments,
)
from engine.tools.fault_proxy import FaultProxy
from engine.tools.localnet import LocalDeployment, deploy_local

SEED: Final = 20_250_611
ARRIVAL_ROUNDS: Final = 20
AUTHORIZATIONS_PER_ROUND_MAX: Final = 50
ROUNDS_MAX: Final = 500  # rounds with faults (all operations arrive within ~25)
SETTLE_ROUNDS_MAX: Final = 100  # rounds without faults, until every record is final
INDEX_POLLS_MAX: Final = 100
# The manager's clock moves ROUND_S per round, so "unmined for STUCK_AFTER_S" means three
# rounds on any machine: that is how a transaction a reorg took out from under later ones
# still in the pool (no nonce gap for the manager to see) gets a replacement.
ROUND_S: Final = 10
STUCK_AFTER_S: Final = 30
RPC_TIMEOUT_S: Final = 0.5
PROXY_HOLD_S_MAX: Final = 2 * RPC_TIMEOUT_S
PROXY_LIFETIME_S_MAX: Final = 3_600.0
BLOCKS_PER_POLL_MAX: Final = 64
FEE_CAP_WEI: Final = 1_000 * 10**9


@dataclass(frozen=True)
class CheckProgress:
    round: int
    confirmed: int  # operations the manager has confirmed so far
    operations: int
    faults: dict[FaultKind, int]


class _RoundClock:
    """The manager's time, moved by the check a round at a time (see ROUND_S)."""

    def __init__(self, start: int) -> None:
        self._now = start

    def now(self) -> int:
        return self._now

    def advance(self, seconds: int) -> None:
        self._now += seconds


def run_chain_check(
    operations: int = OPERATIONS_DEFAULT,
    *,
    db_url: str | None = None,
    seed: int = SEED,
    on_round: Callable[[CheckProgress], None] | None = None,
) -> ChainCheckResult:
    """Starts anvil, deploys the escrow, runs the operations under faults and counts."""
    if not OPERATIONS_MIN <= operations <= OPERATIONS_MAX:
        raise ChainCheckInvalidSize(operations)
    with ExitStack() as stack:
        if db_url is None:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="chain-check-")))
            db_url = f"sqlite:///{folder / 'chain-check.db'}"
        upgrade(db_url)
        _refuse_used(db_url, ANVIL_CHAIN_ID)
        backend = stack.enter_context(AnvilBackend.launch(AnvilConfig()))
        world = deploy_local(backend)
        lanes = operator_lanes(world)
        payments = plan_payments(world, lanes, operations, seed)
        backend.mine(REORG_DEPTH_MAX)  # no reorg reaches the deployment
        node = HttpRpc(backend.process.url)
        node.call("evm_setAutomine", [False])
        proxy = stack.enter_context(
            FaultProxy(
                backend.process.port,
                hold_s_max=PROXY_HOLD_S_MAX,
                lifetime_s_max=PROXY_LIFETIME_S_MAX,
            )
        )
        check = _ChainCheck(world, node, proxy, db_url, lanes, payments, seed, on_round)
        stack.callback(check.close)
        return check.run()


def _refuse_used(db_url: str, chain_id: int) -> None:
    database = open_database(db_url)
    try:
        with database.snapshot() as conn:
            lanes = TxStore(chain_id).lane_nonces(conn)
            checkpoints = checkpoint_count(conn, chain_id)
    finally:
        database.dispose()
    if lanes or checkpoints:
        raise ChainCheckDatabaseInUse()


class _ChainCheck:
    def __init__(
        self,
        world: LocalDeployment,
        node: HttpRpc,
        proxy: FaultProxy,
        db_url: str,
        lanes: Sequence[LocalAccount],
        payments: Sequence[Payment],
        seed: int,
        on_round: Callable[[CheckProgress], None] | None,
    ) -> None:
        self._world = world
        self._node = node  # direct: chain control and the final count bypass the faults
        self._proxy = proxy
        self._db_url = db_url
        self._lanes = list(lanes)
        self._payments = list(payments)
        self._operations: list[Operation] = [
            op for p in payments for op in (p.authorize, p.capture) if op is not None
        ]
        self._faults = FaultScheduler(node, proxy, seed)
        self._on_round = on_round
        self._clock = _RoundClock(int(time.time()))
        self._live = LiveLogs()
        self._records: dict[str, TxRecord] = {}
        self._rounds = 0
        self._arrived = 0  # payments whose authorize has been submitted
        self._per_round = min(
            AUTHORIZATIONS_PER_ROUND_MAX, max(1, -(-len(payments) // ARRIVAL_ROUNDS))
        )
        self._database, self._manager, self._indexer = self._open_engine()

    def close(self) -> None:
        self._database.dispose()

    def run(self) -> ChainCheckResult:
        for _ in range(ROUNDS_MAX):
            if self._all_arrived():
                break
            self._round(faults=True)
        self._faults.calm()
        for _ in range(SETTLE_ROUNDS_MAX):
            if self._all_arrived() and all(r.is_final for r in self._records.values()):
                break
            self._round(faults=False)
        self._node.call("anvil_mine", [REORG_DEPTH_MAX])  # every log confirmed, for the report
        self._index_until_quiet()
        return tally(
            self._node,
            self._world.escrow.address,
            self._operations,
            len(self._records),
            self._live,
            self._faults.counts(),
        )

    def _round(self, *, faults: bool) -> None:
        self._admit()
        if faults:
            self._faults.inject(self._rounds)
        self._pump()
        if faults:
            self._faults.drop_if_due()
        self._faults.advance_chain()
        self._index()
        self._clock.advance(ROUND_S)
        self._refresh()
        if self._on_round is not None:
            confirmed = sum(r.status is TxStatus.CONFIRMED for r in self._records.values())
            faults_so_far = self._faults.counts()
            self._on_round(
                CheckProgress(self._rounds, confirmed, len(self._operations), faults_so_far)
            )
        self._rounds += 1

    def _open_engine(self) -> tuple[Database, TxManager, Indexer]:
        """What a (re)started engine process builds from its database URL."""
        database = open_database(self._db_url)
        config = TxManagerConfig(
            chain_id=self._world.backend.chain_id,
            fees=FeePolicy(FEE_CAP_WEI),
            confirmations=REORG_DEPTH_MAX,
            stuck_after_s=STUCK_AFTER_S,
        )
        rpc = HttpRpc(self._proxy.url, timeout_s=RPC_TIMEOUT_S)
        manager = TxManager(database, rpc, self._lanes, config, self._clock)
        indexer = Indexer(
            database,
            self._world.backend.w3,
            self._world.escrow.address,
            REORG_DEPTH_MAX,
            BLOCKS_PER_POLL_MAX,
        )
        return database, manager, indexer

    def _admit(self) -> None:
        """New authorizations, and captures of holds the manager confirmed. A submit that the
        fault cuts off records nothing; the same operations arrive again next round."""
        captures = [
            p.capture
            for p in self._payments[: self._arrived]
            if p.capture is not None
            and p.capture.key not in self._records
            and self._status(p.authorize) is TxStatus.CONFIRMED
        ]
        arriving = self._payments[self._arrived : self._arrived + self._per_round]
        operations = captures + [p.authorize for p in arriving]
        if not operations:
            return
        try:
            records = self._manager.submit_many([op.request for op in operations])
        except RpcUnavailable:
            return
        finally:
            self._note_fired()
        self._arrived += len(arriving)
        self._records.update((record.idempotency_key, record) for record in records)

    def _pump(self) -> None:
        try:
            self._manager.pump()
        except RpcUnavailable:
            pass  # what the fault cut short, the next pump looks up
        finally:
            self._note_fired()

    def _note_fired(self) -> None:
        """Replaces the engine once an armed restart fired."""
        if self._faults.fired() is not FaultKind.RESTART:
            return
        # The node took the transactions; the manager never learnt it. The process "dies"
        # here, and the next one starts from what the database says.
        self._database.dispose()
        self._database, self._manager, self._indexer = self._open_engine()

    def _index(self) -> PollResult:
        result = self._indexer.poll()
        self._live.apply(result.notices)
        self._indexer.acknowledge(result)
        return result

    def _index_until_quiet(self) -> None:
        for _ in range(INDEX_POLLS_MAX):
            result = self._index()
            if not result.notices and result.scanned_through == result.head:
                return
        raise ChainCheckStalled(f"the indexer did not reach the head in {INDEX_POLLS_MAX} polls")

    def _refresh(self) -> None:
        open_keys = [key for key, record in self._records.items() if not record.is_final]
        for record in self._manager.get_many(open_keys):
            self._records[record.idempotency_key] = record

    def _status(self, operation: Operation) -> TxStatus | None:
        record = self._records.get(operation.key)
        return None if record is None else record.status

    def _all_arrived(self) -> bool:
        """Every operation submitted, except captures of holds that ended unconfirmed."""
        if self._arrived < len(self._payments):
            return False
        return all(self._capture_settled(payment) for payment in self._payments)

    def _capture_settled(self, payment: Payment) -> bool:
        """Submitted, not planned, or never to be: its hold ended without being confirmed."""
        if payment.capture is None or payment.capture.key in self._records:
            return True
        hold = self._records.get(payment.authorize.key)
        return hold is not None and hold.is_final and hold.status is not TxStatus.CONFIRMED
