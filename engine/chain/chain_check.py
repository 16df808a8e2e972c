"""`settle chain-check`: escrow operations through the transaction manager on a fresh anvil,
with every fault the manager and the indexer must survive injected on the way, then a count of
how often each operation took effect on the canonical chain.

What runs, in rounds at the check's own pace (one process, one thread):

* Operations. Each payment is an authorize and, once the manager has confirmed the hold, a
  capture of all of it; each operation is one escrow transaction with its own idempotency key,
  sent by the manager from one of two operator lanes. Authorizations arrive spread over about
  ARRIVAL_ROUNDS rounds, so faults land among them rather than after them.
* Faults, drawn from a fixed seed so that runs are reproducible: `anvil_reorg` of a random depth
  up to REORG_DEPTH_MAX, `anvil_dropTransaction` of one of our pooled transactions (automine is
  off: the check mines a block per round), a few rounds of interval mining, an RPC answer held
  past the manager's read timeout, a connection refused or cut after the node acted, and a
  manager discarded right after a send whose answer it never got (a process killed between
  send and record), replaced by a fresh one on the same database. A fault is due every
  round, the kinds dealt from shuffled decks of all six; one that cannot happen yet (a drop
  with an empty pool, a proxy fault while another is armed) stays due.
* The indexer reads the escrow's logs straight from the node (not through the fault proxy)
  and a consumer applies its notices in order.

The manager and the indexer confirm at REORG_DEPTH_MAX blocks, the deepest reorg injected: a
reorg of d blocks can only take back blocks with fewer than d blocks on top, which neither has
confirmed yet. That is the configuration under test, not a weakening of it.

After quiescence (faults off, every record final, the indexer at the head) the check counts:

* sent: operations the manager recorded (all of them unless a round bound was hit);
* applied_once, duplicates, lost: the planned operations by their effect on the canonical
  chain, read from the escrow events that name them (Authorized for an authorize, Captured for
  a capture, by payment id) and the canonical transactions that carry their calldata. lost: no
  event; duplicates: more than one event or more than one mined transaction; applied_once:
  the rest. The contract refuses a second authorize or capture (PaymentExists, StaleSequence),
  so counting mined transactions is what exposes a manager that sent an operation twice;
* reorgs, dropped, timeouts, disconnects, restarts: faults that happened, counted where they
  happen (a proxy fault when it fires, not when it is armed; a drop only if anvil dropped
  something); interval_blocks: blocks anvil's interval miner built during interval rounds;
* indexer_matches_chain: the consumer's live logs (delivered pending or confirmed, minus those
  reported removed) equal eth_getLogs of the escrow over the whole chain, field for field.
"""

from __future__ import annotations

import json
import random
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import ClassVar, Final

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn
from rich.table import Table
from sqlalchemy import func, select

from engine.chain.anvil import AnvilConfig
from engine.chain.backends import AnvilBackend
from engine.chain.errors import ChainError
from engine.chain.escrow import Method, terms_tuple
from engine.chain.escrow_events import Authorized, Captured, decode_event, event_topics
from engine.chain.fault_proxy import Fault, FaultProxy
from engine.chain.indexer import EscrowLog, Indexer, LogKey, LogNotice, LogStage, PollResult
from engine.chain.localnet import (
    ACCOUNTS_NEEDED,
    DEFAULT_MAX_FEE_BPS,
    UNIT,
    LocalDeployment,
    deploy_local,
)
from engine.chain.networks import ANVIL_CHAIN_ID, get_network
from engine.chain.tx_errors import RpcUnavailable
from engine.chain.tx_fees import FeePolicy
from engine.chain.tx_rpc import HttpRpc, data, hex_data, quantity
from engine.chain.tx_store import TxRecord, TxStatus
from engine.chain.txmanager import TxManager, TxManagerConfig, TxRequest
from engine.store.db import Database, open_database, upgrade
from engine.store.schema import indexer_checkpoints, tx_lanes

OPERATIONS_DEFAULT: Final = 300
OPERATIONS_MIN: Final = 2
OPERATIONS_MAX: Final = 5_000
SEED: Final = 20_250_611
LANES: Final = 2
# The deepest reorg injected, and so the confirmation depth of the manager and the indexer.
REORG_DEPTH_MAX: Final = 3
ARRIVAL_ROUNDS: Final = 20
AUTHORIZATIONS_PER_ROUND_MAX: Final = 50
WARMUP_ROUNDS: Final = 1  # the first round only sends: the first faults need something in flight
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
# A proxy fault aimed at a call that does not come within this many rounds is withdrawn.
ARMED_ROUNDS_MAX: Final = 3
INTERVAL_MINING_S: Final = 1
INTERVAL_ROUNDS: Final = 3
BLOCK_WAIT_S_MAX: Final = 10.0
BLOCK_POLL_S: Final = 0.05
BLOCKS_PER_POLL_MAX: Final = 64
FEE_CAP_WEI: Final = 1_000 * 10**9
AMOUNT_UNITS_MAX: Final = 9
SEND: Final = "eth_sendRawTransaction"
# Calls a timeout or a cut connection is aimed at (None: whatever request comes next); each
# comes in most rounds, from submit (estimates) or pump (head, sends, receipts).
PROXY_TARGETS: Final[tuple[str | None, ...]] = (
    None,
    "eth_getBlockByNumber",
    "eth_estimateGas",
    SEND,
    "eth_getTransactionReceipt",
)


class ChainCheckError(ChainError):
    """Base of the chain check's own errors."""

    code: ClassVar[str] = "chain_check_error"


class ChainCheckNeedsAnvil(ChainCheckError):
    """Reorgs, dropped transactions and mining control exist only on a chain the engine runs."""

    code: ClassVar[str] = "chain_check_needs_anvil"

    def __init__(self, network: str) -> None:
        self.network = network
        super().__init__(
            f"chain-check injects reorgs, dropped transactions and mining changes, which only a "
            f"local anvil started by the engine allows; it refuses network {network!r}: run it "
            "with --network anvil"
        )


class ChainCheckInvalidSize(ChainCheckError):
    code: ClassVar[str] = "chain_check_invalid_size"

    def __init__(self, operations: int) -> None:
        self.operations = operations
        super().__init__(
            f"chain-check runs between {OPERATIONS_MIN} and {OPERATIONS_MAX} operations, not "
            f"{operations}; pass --operations within that range"
        )


class ChainCheckDatabaseInUse(ChainCheckError):
    """The check starts a new anvil, so signer nonces or a checkpoint of an older one would be
    wrong, and its idempotency keys would meet the previous run's."""

    code: ClassVar[str] = "chain_check_database_in_use"

    def __init__(self) -> None:
        super().__init__(
            "the database already holds signer lanes or an indexer checkpoint for anvil's chain "
            "id; give chain-check an empty database (or none, for a temporary SQLite file)"
        )


class ChainCheckStalled(ChainCheckError):
    code: ClassVar[str] = "chain_check_stalled"


class FaultKind(StrEnum):
    REORG = "reorg"
    DROP = "drop"
    INTERVAL = "interval"
    TIMEOUT = "timeout"
    DISCONNECT = "disconnect"
    RESTART = "restart"


@dataclass
class ChainCheckResult:
    """The issue's fields first, in its order; then the faults it names without a field."""

    sent: int = 0
    applied_once: int = 0
    duplicates: int = 0
    lost: int = 0
    reorgs: int = 0
    dropped: int = 0
    timeouts: int = 0
    indexer_matches_chain: bool = False
    disconnects: int = 0
    restarts: int = 0
    interval_blocks: int = 0

    @property
    def passed(self) -> bool:
        return self.duplicates == 0 and self.lost == 0 and self.indexer_matches_chain

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)

    def faults(self) -> dict[FaultKind, int]:
        return {
            FaultKind.REORG: self.reorgs,
            FaultKind.DROP: self.dropped,
            FaultKind.INTERVAL: self.interval_blocks,
            FaultKind.TIMEOUT: self.timeouts,
            FaultKind.DISCONNECT: self.disconnects,
            FaultKind.RESTART: self.restarts,
        }


@dataclass(frozen=True)
class CheckProgress:
    round: int
    confirmed: int  # operations the manager has confirmed so far
    operations: int
    faults: dict[FaultKind, int]


@dataclass(frozen=True)
class _Operation:
    kind: str  # "authorize" or "capture": the escrow event that shows it applied
    payment_id: bytes
    request: TxRequest

    @property
    def key(self) -> str:
        return self.request.idempotency_key


@dataclass(frozen=True)
class _Payment:
    authorize: _Operation
    capture: _Operation | None  # None: an odd operation count leaves the last hold open


class _RoundClock:
    """The manager's time, moved by the check a round at a time (see ROUND_S)."""

    def __init__(self, start: int) -> None:
        self._now = start

    def now(self) -> int:
        return self._now

    def advance(self, seconds: int) -> None:
        self._now += seconds


@dataclass
class _LiveLogs:
    """The consumer: what the indexer delivered, minus what it reported removed, applied in
    delivery order (a log can be removed and come back)."""

    logs: dict[LogKey, EscrowLog] = field(default_factory=dict)
    consistent: bool = True  # False once a removal named a log that was not live

    def apply(self, notices: Sequence[LogNotice]) -> None:
        for notice in notices:
            if notice.stage is LogStage.REMOVED:
                self.consistent &= self.logs.pop(notice.log.key, None) is not None
            else:
                self.logs[notice.log.key] = notice.log


def require_anvil(network: str) -> None:
    """Refuses every network but anvil (unknown names raise UnknownNetwork)."""
    chosen = get_network(network)
    if chosen.name != "anvil":
        raise ChainCheckNeedsAnvil(chosen.name)


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
        lanes = _operator_lanes(world)
        payments = _plan(world, lanes, operations, seed)
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
            lanes = conn.execute(
                select(func.count()).select_from(tx_lanes).where(tx_lanes.c.chain_id == chain_id)
            ).scalar_one()
            checkpoints = conn.execute(
                select(func.count())
                .select_from(indexer_checkpoints)
                .where(indexer_checkpoints.c.chain_id == chain_id)
            ).scalar_one()
    finally:
        database.dispose()
    if lanes or checkpoints:
        raise ChainCheckDatabaseInUse()


def _operator_lanes(world: LocalDeployment) -> list[LocalAccount]:
    """The deployment's operator plus funded accounts it does not use, given the operator role."""
    extra = world.backend.accounts()[ACCOUNTS_NEEDED : ACCOUNTS_NEEDED + LANES - 1]
    assert len(extra) == LANES - 1, "anvil has too few accounts for the lanes"
    role = world.escrow.functions.OPERATOR_ROLE().call()
    for account in extra:
        world.admin.send(world.escrow.functions.grantRole(role, account.address))
    return [world.operator.account, *extra]


def _plan(
    world: LocalDeployment, lanes: Sequence[LocalAccount], operations: int, seed: int
) -> list[_Payment]:
    escrow = world.escrow
    payments = []
    for index in range((operations + 1) // 2):
        lane = lanes[index % len(lanes)].address
        amount = (1 + index % AMOUNT_UNITS_MAX) * UNIT
        terms = world.terms(amount, operator=lane)
        payment_id = world.payment_hash(terms)
        args = [terms_tuple(terms), amount, Method.ALLOWANCE, world.payer_signature(terms)]
        authorize = _Operation(
            "authorize",
            payment_id,
            TxRequest(
                escrow.address,
                data(escrow.encode_abi("authorize", args=args)),
                f"chain-check-{seed}-{index}-authorize",
                lane=lane,
            ),
        )
        capture = None
        if 2 * index + 1 < operations:
            fee_bps = index % (DEFAULT_MAX_FEE_BPS + 1)
            args = [terms_tuple(terms), 1, amount, fee_bps, []]
            capture = _Operation(
                "capture",
                payment_id,
                TxRequest(
                    escrow.address,
                    data(escrow.encode_abi("capture", args=args)),
                    f"chain-check-{seed}-{index}-capture",
                    lane=lane,
                ),
            )
        payments.append(_Payment(authorize, capture))
    return payments


class _ChainCheck:
    def __init__(
        self,
        world: LocalDeployment,
        node: HttpRpc,
        proxy: FaultProxy,
        db_url: str,
        lanes: Sequence[LocalAccount],
        payments: Sequence[_Payment],
        seed: int,
        on_round: Callable[[CheckProgress], None] | None,
    ) -> None:
        self._world = world
        self._node = node  # direct: chain control and the final count bypass the faults
        self._proxy = proxy
        self._db_url = db_url
        self._lanes = list(lanes)
        self._payments = list(payments)
        self._operations = [
            op for p in payments for op in (p.authorize, p.capture) if op is not None
        ]
        self._rng = random.Random(seed)
        self._on_round = on_round
        self._clock = _RoundClock(int(time.time()))
        self._result = ChainCheckResult()
        self._live = _LiveLogs()
        self._records: dict[str, TxRecord] = {}
        self._rounds = 0
        self._arrived = 0  # payments whose authorize has been submitted
        self._per_round = min(
            AUTHORIZATIONS_PER_ROUND_MAX, max(1, -(-len(payments) // ARRIVAL_ROUNDS))
        )
        self._deck: list[FaultKind] = []
        self._due: FaultKind | None = None
        self._armed: tuple[FaultKind, int] | None = None
        self._interval_rounds_left = 0
        self._database, self._manager, self._indexer = self._open_engine()

    def close(self) -> None:
        self._database.dispose()

    def run(self) -> ChainCheckResult:
        for _ in range(ROUNDS_MAX):
            if self._all_arrived():
                break
            self._round(faults=True)
        self._calm()
        for _ in range(SETTLE_ROUNDS_MAX):
            if self._all_arrived() and all(r.is_final for r in self._records.values()):
                break
            self._round(faults=False)
        self._node.call("anvil_mine", [REORG_DEPTH_MAX])  # every log confirmed, for the report
        self._index_until_quiet()
        return self._count()

    # ─────────────────────────────── one round ───────────────────────────────

    def _round(self, *, faults: bool) -> None:
        self._admit()
        if faults:
            self._inject()
        self._pump()
        if faults and self._due is FaultKind.DROP:
            self._drop()
        self._advance_chain()
        self._index()
        self._clock.advance(ROUND_S)
        self._refresh()
        if self._on_round is not None:
            confirmed = sum(r.status is TxStatus.CONFIRMED for r in self._records.values())
            faults_so_far = self._result.faults()
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

    def _advance_chain(self) -> None:
        if not self._interval_rounds_left:
            self._node.call("anvil_mine", [1])
            return
        self._result.interval_blocks += self._wait_for_block()
        self._interval_rounds_left -= 1
        if not self._interval_rounds_left:
            self._node.call("evm_setIntervalMining", [0])  # back to mining on request only

    def _wait_for_block(self) -> int:
        start = self._head()
        deadline = time.monotonic() + BLOCK_WAIT_S_MAX
        while time.monotonic() < deadline:
            head = self._head()
            if head > start:
                return head - start
            time.sleep(BLOCK_POLL_S)
        raise ChainCheckStalled(
            f"anvil mined no block within {BLOCK_WAIT_S_MAX} s of interval mining every "
            f"{INTERVAL_MINING_S} s; is the machine overloaded?"
        )

    def _index(self) -> PollResult:
        result = self._indexer.poll()
        self._live.apply(result.notices)
        self._indexer.acknowledge(result)
        return result

    def _refresh(self) -> None:
        open_keys = [key for key, record in self._records.items() if not record.is_final]
        for record in self._manager.get_many(open_keys):
            self._records[record.idempotency_key] = record

    def _status(self, operation: _Operation) -> TxStatus | None:
        record = self._records.get(operation.key)
        return None if record is None else record.status

    def _all_arrived(self) -> bool:
        """Every operation submitted, except captures of holds that ended unconfirmed."""
        if self._arrived < len(self._payments):
            return False
        return all(self._capture_settled(payment) for payment in self._payments)

    def _capture_settled(self, payment: _Payment) -> bool:
        """Submitted, not planned, or never to be: its hold ended without being confirmed."""
        if payment.capture is None or payment.capture.key in self._records:
            return True
        hold = self._records.get(payment.authorize.key)
        return hold is not None and hold.is_final and hold.status is not TxStatus.CONFIRMED

    # ──────────────────────────────── faults ─────────────────────────────────

    def _inject(self) -> None:
        if self._armed is not None and self._rounds - self._armed[1] >= ARMED_ROUNDS_MAX:
            self._proxy.clear()  # aimed at a call that did not come: withdrawn, not counted
            self._armed = None
        if self._due is None:
            self._due = self._draw()
        due = self._due
        if due is None or due is FaultKind.DROP:  # a drop waits for the pump to fill the pool
            return
        if due is FaultKind.REORG:
            done = self._reorg()
        elif due is FaultKind.INTERVAL:
            done = self._start_interval_mining()
        else:
            done = self._arm(due)
        if done:
            self._due = None

    def _draw(self) -> FaultKind | None:
        if self._rounds < WARMUP_ROUNDS:
            return None
        if not self._deck:
            self._deck = list(FaultKind)
            self._rng.shuffle(self._deck)
        return self._deck.pop()

    def _reorg(self) -> bool:
        if self._interval_rounds_left:  # not while anvil's miner builds on the same tip
            return False
        depth = self._rng.randint(1, REORG_DEPTH_MAX)
        self._node.call("anvil_reorg", [depth, []])
        self._result.reorgs += 1
        return True

    def _start_interval_mining(self) -> bool:
        self._node.call("evm_setIntervalMining", [INTERVAL_MINING_S])
        self._interval_rounds_left = INTERVAL_ROUNDS
        return True

    def _arm(self, kind: FaultKind) -> bool:
        """One proxy fault at a time, so that when one fires its kind is known."""
        if self._armed is not None:
            return False
        if kind is FaultKind.TIMEOUT:
            self._proxy.inject(Fault.HOLD_RESPONSE, self._rng.choice(PROXY_TARGETS))
        elif kind is FaultKind.DISCONNECT:
            cut = self._rng.choice((Fault.REFUSE, Fault.DROP_RESPONSE))
            self._proxy.inject(cut, self._rng.choice(PROXY_TARGETS))
        else:
            assert kind is FaultKind.RESTART, kind
            self._proxy.inject(Fault.DROP_RESPONSE, SEND)
        self._armed = (kind, self._rounds)
        return True

    def _note_fired(self) -> None:
        """Counts the armed proxy fault once it fired; a restart replaces the engine then."""
        if self._armed is None or self._proxy.armed:
            return
        kind, _ = self._armed
        self._armed = None
        if kind is FaultKind.TIMEOUT:
            self._result.timeouts += 1
        elif kind is FaultKind.DISCONNECT:
            self._result.disconnects += 1
        else:
            # The node took the transactions; the manager never learnt it. The process "dies"
            # here, and the next one starts from what the database says.
            self._database.dispose()
            self._database, self._manager, self._indexer = self._open_engine()
            self._result.restarts += 1

    def _drop(self) -> None:
        pool = self._node.call("txpool_content", [])
        hashes = sorted(
            tx["hash"] for by_nonce in pool["pending"].values() for tx in by_nonce.values()
        )
        if not hashes:
            return
        if self._node.call("anvil_dropTransaction", [self._rng.choice(hashes)]) is not None:
            self._result.dropped += 1
            self._due = None

    def _calm(self) -> None:
        """Faults off: nothing armed, mining on request only."""
        self._proxy.clear()
        self._armed = None
        self._due = None
        if self._interval_rounds_left:
            self._interval_rounds_left = 0
            self._node.call("evm_setIntervalMining", [0])

    # ─────────────────────────────── counting ────────────────────────────────

    def _index_until_quiet(self) -> None:
        for _ in range(INDEX_POLLS_MAX):
            result = self._index()
            if not result.notices and result.scanned_through == result.head:
                return
        raise ChainCheckStalled(f"the indexer did not reach the head in {INDEX_POLLS_MAX} polls")

    def _head(self) -> int:
        return quantity(self._node.call("eth_blockNumber", []))

    def _count(self) -> ChainCheckResult:
        head = self._head()
        blocks = self._node.batch(
            [("eth_getBlockByNumber", [hex(number), True]) for number in range(head + 1)]
        )
        timestamps: dict[int, int] = {}
        escrow = self._world.escrow.address
        mined: Counter[bytes] = Counter()
        for number, block in enumerate(blocks):
            assert isinstance(block, dict) and quantity(block["number"]) == number, block
            timestamps[number] = quantity(block["timestamp"])
            mined.update(
                data(tx["input"])
                for tx in block["transactions"]
                if tx["to"] and to_checksum_address(tx["to"]) == escrow
            )
        canonical = self._canonical_logs(head, timestamps)
        applied: Counter[tuple[str, bytes]] = Counter()
        for log in canonical.values():
            if isinstance(log.event, Authorized):
                applied["authorize", log.event.payment_id] += 1
            elif isinstance(log.event, Captured):
                applied["capture", log.event.payment_id] += 1
        result = self._result
        result.sent = len(self._records)
        for operation in self._operations:
            times = applied[operation.kind, operation.payment_id]
            if times == 0:
                result.lost += 1
            elif times > 1 or mined[operation.request.data] > 1:
                result.duplicates += 1
            else:
                result.applied_once += 1
        result.indexer_matches_chain = self._live.consistent and self._live.logs == canonical
        return result

    def _canonical_logs(self, head: int, timestamps: dict[int, int]) -> dict[LogKey, EscrowLog]:
        """The escrow's payment logs from eth_getLogs, in the indexer's form."""
        logs = self._node.call(
            "eth_getLogs",
            [
                {
                    "address": self._world.escrow.address,
                    "fromBlock": hex(0),
                    "toBlock": hex(head),
                    "topics": [[hex_data(topic) for topic in event_topics()]],
                }
            ],
        )
        found: dict[LogKey, EscrowLog] = {}
        for log in logs:
            number = quantity(log["blockNumber"])
            key = LogKey(
                data(log["blockHash"]), data(log["transactionHash"]), quantity(log["logIndex"])
            )
            found[key] = EscrowLog(
                block_number=number,
                block_hash=key.block_hash,
                block_timestamp=timestamps[number],
                tx_hash=key.tx_hash,
                log_index=key.log_index,
                event=decode_event([data(t) for t in log["topics"]], data(log["data"])),
            )
        return found


def cmd_chain_check(
    network: str, as_json: bool, operations: int = OPERATIONS_DEFAULT, db_url: str | None = None
) -> int:
    """`settle chain-check --network anvil [--operations N] [--json]`: exit 0 only when no
    operation was applied twice or lost and the indexer's output equals the chain's logs."""
    require_anvil(network)
    if as_json:
        result = run_chain_check(operations, db_url=db_url)
        print(json.dumps(result.to_dict()))
        return 0 if result.passed else 1
    console = Console()
    started = time.monotonic()
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, console=console, transient=True) as bar:
        task = bar.add_task("starting anvil, deploying the escrow", total=operations)

        def show(progress: CheckProgress) -> None:
            faults = ", ".join(f"{kind} {count}" for kind, count in progress.faults.items())
            bar.update(
                task,
                completed=progress.confirmed,
                description=f"round {progress.round} · faults: {faults} · confirmed",
            )

        result = run_chain_check(operations, db_url=db_url, on_round=show)
    elapsed = time.monotonic() - started
    table = Table(title="chain-check on anvil", caption=f"{operations} operations, {elapsed:.1f} s")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for name, value in result.to_dict().items():
        table.add_row(name.replace("_", " "), str(value).lower())
    console.print(table)
    verdict = (
        "[green]passed[/green]: every operation applied exactly once, indexer equals chain"
        if result.passed
        else "[red]failed[/red]: see duplicates, lost and indexer_matches_chain"
    )
    console.print(verdict)
    return 0 if result.passed else 1
