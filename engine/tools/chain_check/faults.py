"""The faults the chain check injects, and when.

They are drawn from a fixed seed so that runs are reproducible: `anvil_reorg` of a random depth
up to REORG_DEPTH_MAX, `anvil_dropTransaction` of one of our pooled transactions (automine is
off: the check mines a block per round), a few rounds of interval mining, an RPC answer held
past the manager's read timeout, a connection refused or cut after the node acted, and a
manager discarded right after a send whose answer it never got (a process killed between send
and record), replaced by a fresh one on the same database. A fault is due every round, the
kinds dealt from shuffled decks of all six; one that cannot happen yet (a drop with an empty
pool, a proxy fault while another is armed) stays due.

Faults are counted where they happen: a proxy fault when it fires, not when it is armed; a drop
only if anvil dropped something; interval mining by the blocks anvil's interval miner built.
"""

from __future__ import annotations

import random
import time
from enum import StrEnum
from typing import Final

from engine.chain.rpc import HttpRpc, quantity
from engine.tools.chain_check.errors import ChainCheckStalled
from engine.tools.fault_proxy import Fault, FaultProxy

# The deepest reorg injected, and so the confirmation depth of the manager and the indexer.
REORG_DEPTH_MAX: Final = 3
WARMUP_ROUNDS: Final = 1  # the first round only sends: the first faults need something in flight
# A proxy fault aimed at a call that does not come within this many rounds is withdrawn.
ARMED_ROUNDS_MAX: Final = 3
INTERVAL_MINING_S: Final = 1
INTERVAL_ROUNDS: Final = 3
BLOCK_WAIT_S_MAX: Final = 10.0
BLOCK_POLL_S: Final = 0.05
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


class FaultKind(StrEnum):
    REORG = "reorg"
    DROP = "drop"
    INTERVAL = "interval"
    TIMEOUT = "timeout"
    DISCONNECT = "disconnect"
    RESTART = "restart"


class FaultScheduler:
    """Deals one fault at a time, injects it when it can happen, and counts what happened.

    Chain control goes to `node` directly; the faults of the RPC the manager uses are armed
    on `proxy`, one at a time, so that when one fires its kind is known.
    """

    def __init__(self, node: HttpRpc, proxy: FaultProxy, seed: int) -> None:
        self._node = node
        self._proxy = proxy
        self._rng = random.Random(seed)
        self._deck: list[FaultKind] = []
        self._due: FaultKind | None = None
        self._armed: tuple[FaultKind, int] | None = None
        self._interval_rounds_left = 0
        self._counts = dict.fromkeys(FaultKind, 0)

    def counts(self) -> dict[FaultKind, int]:
        """How often each kind happened so far (interval: blocks its miner built)."""
        return dict(self._counts)

    def inject(self, round_: int) -> None:
        """Withdraws a proxy fault armed too long ago, then injects the due one if it can."""
        if self._armed is not None and round_ - self._armed[1] >= ARMED_ROUNDS_MAX:
            self._proxy.clear()  # aimed at a call that did not come: withdrawn, not counted
            self._armed = None
        if self._due is None:
            self._due = self._draw(round_)
        due = self._due
        if due is None or due is FaultKind.DROP:  # a drop waits for the pump to fill the pool
            return
        if due is FaultKind.REORG:
            done = self._reorg()
        elif due is FaultKind.INTERVAL:
            done = self._start_interval_mining()
        else:
            done = self._arm(due, round_)
        if done:
            self._due = None

    def drop_if_due(self) -> None:
        """Drops one of the pooled transactions if a drop is due and the pool holds any."""
        if self._due is not FaultKind.DROP:
            return
        pool = self._node.call("txpool_content", [])
        hashes = sorted(
            tx["hash"] for by_nonce in pool["pending"].values() for tx in by_nonce.values()
        )
        if not hashes:
            return
        if self._node.call("anvil_dropTransaction", [self._rng.choice(hashes)]) is not None:
            self._counts[FaultKind.DROP] += 1
            self._due = None

    def fired(self) -> FaultKind | None:
        """The armed proxy fault, counted, once it has fired; None while none has. The
        caller replaces the engine after a RESTART."""
        if self._armed is None or self._proxy.armed:
            return None
        kind, _ = self._armed
        self._armed = None
        self._counts[kind] += 1
        return kind

    def advance_chain(self) -> None:
        """One block a round, or, during interval mining, whatever anvil's miner built."""
        if not self._interval_rounds_left:
            self._node.call("anvil_mine", [1])
            return
        self._counts[FaultKind.INTERVAL] += self._wait_for_block()
        self._interval_rounds_left -= 1
        if not self._interval_rounds_left:
            self._node.call("evm_setIntervalMining", [0])  # back to mining on request only

    def calm(self) -> None:
        """Faults off: nothing armed, mining on request only."""
        self._proxy.clear()
        self._armed = None
        self._due = None
        if self._interval_rounds_left:
            self._interval_rounds_left = 0
            self._node.call("evm_setIntervalMining", [0])

    def _draw(self, round_: int) -> FaultKind | None:
        if round_ < WARMUP_ROUNDS:
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
        self._counts[FaultKind.REORG] += 1
        return True

    def _start_interval_mining(self) -> bool:
        self._node.call("evm_setIntervalMining", [INTERVAL_MINING_S])
        self._interval_rounds_left = INTERVAL_ROUNDS
        return True

    def _arm(self, kind: FaultKind, round_: int) -> bool:
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
        self._armed = (kind, round_)
        return True

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

    def _head(self) -> int:
        return quantity(self._node.call("eth_blockNumber", []))
