"""The escrow log indexer on a steady chain (both EVMs, SQLite and PostgreSQL): confirmation
depth, checkpoints that survive a restart, bounded steps, at-least-once delivery and the
consumer-side dedupe that makes it exactly-once in effect.

Reorgs are in test_indexer_reorgs.py; the helpers here (a model consumer, polling until
quiet, the chain's own view of the escrow's logs) are shared with it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

import pytest
from sqlalchemy import func, select
from web3 import Web3

from engine.chain.contracts.escrow import Method
from engine.chain.contracts.logs import Authorized, Voided, decode_event, event_topics
from engine.chain.errors import RpcRequestFailed
from engine.chain.indexer import log_indexer as indexer_module
from engine.chain.indexer.log_indexer import (
    REORG_DEPTH_MAX_DEFAULT,
    EscrowLog,
    Indexer,
    IndexerConflict,
    LogKey,
    LogNotice,
    LogStage,
    NoticeDedupe,
    PollResult,
)
from engine.chain.rpc import RPC_BATCH_SIZE_MAX, Rpc, RpcCall, rpc_for
from engine.store.db import Database
from engine.store.schema import indexer_blocks
from engine.tools.localnet import LocalDeployment

POLLS_TO_QUIET_MAX = 100


@dataclass
class Consumer:
    """A consumer that applies notices in order, as the ledger will, and remembers all it saw."""

    live: dict[LogKey, EscrowLog] = field(default_factory=dict)
    seen: list[tuple[LogStage, LogKey]] = field(default_factory=list)
    blocks_rolled_back: int = 0

    def apply(self, result: PollResult) -> None:
        self.blocks_rolled_back += result.reorg_depth
        for notice in result.notices:
            key = notice.log.key
            self.seen.append((notice.stage, key))
            if notice.stage is LogStage.REMOVED:
                del self.live[key]
            else:
                self.live[key] = notice.log

    def keys(self, stage: LogStage) -> set[LogKey]:
        return {key for seen_stage, key in self.seen if seen_stage is stage}


def poll_until_quiet(indexer: Indexer, consumer: Consumer) -> PollResult:
    """Poll, apply and acknowledge until the indexer has read up to the head and has nothing
    more to say; the last, empty result."""
    for _ in range(POLLS_TO_QUIET_MAX):
        result = indexer.poll()
        consumer.apply(result)
        indexer.acknowledge(result)
        if not result.notices and result.scanned_through == result.head:
            return result
    raise AssertionError(f"the indexer was not quiet after {POLLS_TO_QUIET_MAX} polls")


def chain_logs(w3: Web3, escrow: str) -> dict[LogKey, EscrowLog]:
    """The escrow's payment logs on the canonical chain, straight from eth_getLogs."""
    logs = w3.eth.get_logs(
        {
            "address": w3.to_checksum_address(escrow),
            "fromBlock": 0,
            "toBlock": w3.eth.block_number,
            "topics": [["0x" + topic.hex() for topic in event_topics()]],
        }
    )
    found = {}
    for log in logs:
        block_hash = bytes(log["blockHash"])
        key = LogKey(block_hash, bytes(log["transactionHash"]), log["logIndex"])
        found[key] = EscrowLog(
            block_number=log["blockNumber"],
            block_hash=block_hash,
            block_timestamp=int(w3.eth.get_block(log["blockHash"])["timestamp"]),
            tx_hash=key.tx_hash,
            log_index=key.log_index,
            event=decode_event([bytes(t) for t in log["topics"]], bytes(log["data"])),
        )
    return found


def indexer_for(world: LocalDeployment, database: Database, confirmations: int) -> Indexer:
    return Indexer(database, world.backend.w3, world.escrow.address, confirmations, 50)


def test_a_log_is_confirmed_once_confirmations_blocks_are_built_on_its_block(
    world: LocalDeployment, database: Database
) -> None:
    indexer = indexer_for(world, database, confirmations=3)
    world.backend.mine(3)  # the deployment's own logs confirmed first
    poll_until_quiet(indexer, Consumer())
    terms = world.terms()
    block = world.authorize(terms)["blockNumber"]

    stages = []
    for blocks_on_top in range(4):
        result = indexer.poll()
        indexer.acknowledge(result)
        stages.append((blocks_on_top, [n.stage for n in result.notices]))
        assert result.scanned_through - block == blocks_on_top
        world.backend.mine()

    assert stages == [
        (0, [LogStage.PENDING]),
        (1, []),
        (2, []),
        (3, [LogStage.CONFIRMED]),
    ]
    [authorized] = result.confirmed
    assert authorized.event == Authorized(
        world.payment_hash(terms), terms, terms.max_amount, Method.ALLOWANCE
    )
    assert authorized.block_number == block


def test_with_zero_confirmations_a_log_is_confirmed_by_the_poll_that_first_reads_it(
    world: LocalDeployment, database: Database
) -> None:
    indexer = indexer_for(world, database, confirmations=0)
    poll_until_quiet(indexer, Consumer())
    world.authorize(world.terms())

    result = indexer.poll()

    assert [n.stage for n in result.notices] == [LogStage.CONFIRMED]


def test_the_indexer_delivers_exactly_the_chains_payment_logs_in_chain_order(
    world: LocalDeployment, database: Database
) -> None:
    for _ in range(3):
        world.authorize(world.terms())
    indexer = indexer_for(world, database, confirmations=2)
    consumer = Consumer()

    poll_until_quiet(indexer, consumer)
    world.backend.mine(2)
    poll_until_quiet(indexer, consumer)

    on_chain = chain_logs(world.backend.w3, world.escrow.address)
    assert consumer.live == on_chain
    confirmed = [key for stage, key in consumer.seen if stage is LogStage.CONFIRMED]
    assert confirmed == sorted(on_chain, key=lambda k: (on_chain[k].block_number, k.log_index))
    assert not consumer.keys(LogStage.REMOVED)


def test_each_poll_reads_at_most_blocks_per_poll_max_blocks(
    world: LocalDeployment, database: Database
) -> None:
    world.backend.mine(20)
    indexer = Indexer(database, world.backend.w3, world.escrow.address, 0, 7, start_block=3)

    reached = [indexer.poll().scanned_through for _ in range(3)]

    assert reached == [9, 16, 23]


def test_a_poll_over_more_blocks_than_one_batch_request_holds_reads_every_one(
    world: LocalDeployment, database: Database
) -> None:
    world.backend.mine(RPC_BATCH_SIZE_MAX)
    world.authorize(world.terms())
    span = world.backend.w3.eth.block_number + 1
    indexer = Indexer(database, world.backend.w3, world.escrow.address, 0, span)
    consumer = Consumer()

    result = indexer.poll()
    consumer.apply(result)

    assert result.scanned_through == result.head
    assert consumer.live == chain_logs(world.backend.w3, world.escrow.address)
    with database.snapshot() as conn:
        stored = conn.execute(select(func.count()).select_from(indexer_blocks)).scalar_one()
    assert stored == min(result.head + 1, REORG_DEPTH_MAX_DEFAULT + 1)


def test_an_indexer_whose_start_block_is_not_mined_yet_waits_for_it(
    world: LocalDeployment, database: Database
) -> None:
    start = world.backend.w3.eth.block_number + 3
    indexer = Indexer(database, world.backend.w3, world.escrow.address, 0, 10, start_block=start)

    waiting = indexer.poll()
    world.backend.mine(3)
    world.authorize(world.terms())
    started = indexer.poll()

    assert (waiting.notices, waiting.scanned_through) == ((), start - 1)
    assert [log.block_number for log in started.confirmed] == [start + 1]


def test_only_the_hashes_of_the_last_reorg_depth_max_blocks_are_kept_and_they_chain(
    world: LocalDeployment, database: Database
) -> None:
    indexer = Indexer(database, world.backend.w3, world.escrow.address, 2, 10, reorg_depth_max=4)

    result = poll_until_quiet(indexer, Consumer())

    with database.snapshot() as conn:
        rows = conn.execute(select(indexer_blocks).order_by(indexer_blocks.c.number)).all()
    assert [row.number for row in rows] == list(range(result.head - 4, result.head + 1))
    for parent, child in pairwise(rows):
        assert bytes(child.parent_hash) == bytes(parent.hash)
    assert bytes(rows[-1].hash) == bytes(world.backend.w3.eth.get_block(result.head)["hash"])


def test_a_new_indexer_continues_from_the_checkpoint_and_the_dedupe_applies_each_log_once(
    world: LocalDeployment, database: Database
) -> None:
    """The first indexer stops after two polls, the second of which its consumer applied but
    never acknowledged (it crashed in between): the second indexer delivers that poll again,
    and the dedupe, written in the consumer's transaction, turns the repeat into a no-op."""
    for _ in range(4):
        world.authorize(world.terms())
    world.backend.mine(20)
    dedupe = NoticeDedupe("ledger")
    applied: list[tuple[LogStage, LogKey]] = []

    def consume(result: PollResult) -> None:
        with database.transaction() as conn:
            for notice in result.notices:
                if dedupe.first_delivery(conn, notice):
                    applied.append((notice.stage, notice.log.key))

    first = Indexer(database, world.backend.w3, world.escrow.address, 0, 10)
    acknowledged = first.poll()
    consume(acknowledged)
    first.acknowledge(acknowledged)
    unacknowledged = first.poll()
    consume(unacknowledged)
    assert unacknowledged.notices

    second = Indexer(database, world.backend.w3, world.escrow.address, 0, 10)
    resumed = second.poll()
    consume(resumed)
    second.acknowledge(resumed)

    assert resumed.notices[: len(unacknowledged.notices)] == unacknowledged.notices
    assert resumed.scanned_through == unacknowledged.scanned_through + 10
    while resumed.scanned_through < resumed.head:
        resumed = second.poll()
        consume(resumed)
        second.acknowledge(resumed)
    on_chain = chain_logs(world.backend.w3, world.escrow.address)
    assert sorted(applied) == sorted((LogStage.CONFIRMED, key) for key in on_chain)


def test_notices_are_delivered_again_until_acknowledged(
    world: LocalDeployment, database: Database
) -> None:
    indexer = indexer_for(world, database, confirmations=0)

    first = indexer.poll()
    again = indexer.poll()
    indexer.acknowledge(again)
    after = indexer.poll()

    assert first.notices
    assert again.notices == first.notices
    assert after.notices == ()


def test_an_acknowledgement_in_the_consumers_transaction_rolls_back_with_it(
    world: LocalDeployment, database: Database
) -> None:
    indexer = indexer_for(world, database, confirmations=0)
    result = indexer.poll()

    with pytest.raises(RuntimeError), database.transaction() as conn:
        indexer.acknowledge(result, conn)
        raise RuntimeError("the consumer failed after acknowledging")

    assert indexer.poll().notices == result.notices


class Interposed:
    """The indexer's own RPC client, with a hook that sees each batch before the node does."""

    def __init__(self, node: Rpc, before_batch: Callable[[Sequence[RpcCall]], None]) -> None:
        self._node = node
        self._before_batch = before_batch
        self.url = node.url

    def call(self, method: str, params: list[Any]) -> Any:
        return self._node.call(method, params)

    def batch(self, calls: Sequence[RpcCall]) -> list[Any | RpcRequestFailed]:
        self._before_batch(calls)
        return self._node.batch(calls)


def interpose(
    monkeypatch: pytest.MonkeyPatch, before_batch: Callable[[Sequence[RpcCall]], None]
) -> None:
    """Indexers made from now on read the chain through `Interposed`."""
    monkeypatch.setattr(indexer_module, "rpc_for", lambda w3: Interposed(rpc_for(w3), before_batch))


def reads_logs(calls: Sequence[RpcCall]) -> bool:
    return any(method == "eth_getLogs" for method, _ in calls)


def test_an_indexer_whose_checkpoint_another_indexer_advanced_mid_poll_stops(
    world: LocalDeployment, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rival polls while the first indexer reads the chain (a hook on the first one's
    own RPC client lets it in just then): the first must not write its stale view."""
    rival = Indexer(database, world.backend.w3, world.escrow.address, 0, 50)
    rival_polls: list[PollResult] = []

    def rival_polls_first(calls: Sequence[RpcCall]) -> None:
        if not rival_polls and reads_logs(calls):
            rival_polls.append(rival.poll())

    interpose(monkeypatch, rival_polls_first)
    indexer = Indexer(database, world.backend.w3, world.escrow.address, 0, 50)

    with pytest.raises(IndexerConflict):
        indexer.poll()
    assert rival_polls[0].notices
    assert indexer.poll().notices == rival_polls[0].notices


def test_a_block_gone_by_the_time_its_header_is_read_only_holds_the_poll_back(
    world: LocalDeployment, database: Database, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The chain gets shorter between the read of the head and the batch of headers and logs:
    the node answers null for the missing block, and the poll stores nothing and advances
    nothing; the next one reads the chain as it now is."""
    backend = world.backend
    consumer = Consumer()
    poll_until_quiet(indexer_for(world, database, confirmations=0), consumer)
    fork = backend.snapshot()
    world.authorize(world.terms())
    shortened: list[bool] = []

    def shorten(calls: Sequence[RpcCall]) -> None:
        if not shortened and reads_logs(calls):
            backend.revert(fork)
            shortened.append(True)

    interpose(monkeypatch, shorten)
    indexer = indexer_for(world, database, confirmations=0)

    held_back = indexer.poll()
    backend.mine()
    caught_up = poll_until_quiet(indexer, consumer)

    assert shortened
    assert (held_back.notices, held_back.scanned_through) == ((), held_back.head - 1)
    assert caught_up.scanned_through == held_back.head
    assert consumer.live == chain_logs(backend.w3, world.escrow.address)
    assert not consumer.keys(LogStage.REMOVED)


def test_dedupe_accepts_a_notice_once_per_consumer_and_stage(database: Database) -> None:
    log = EscrowLog(1, b"\x01" * 32, 0, b"\x02" * 32, 3, Voided(bytes(32), 1, 5))
    pending, confirmed = LogNotice(1, LogStage.PENDING, log), LogNotice(2, LogStage.CONFIRMED, log)
    ledger, audit = NoticeDedupe("ledger"), NoticeDedupe("audit")

    with database.transaction() as conn:
        firsts = [
            ledger.first_delivery(conn, pending),
            ledger.first_delivery(conn, confirmed),
            audit.first_delivery(conn, confirmed),
        ]
    with database.transaction() as conn:
        repeats = [
            ledger.first_delivery(conn, pending),
            ledger.first_delivery(conn, LogNotice(9, LogStage.CONFIRMED, log)),
            audit.first_delivery(conn, confirmed),
        ]

    assert firsts == [True, True, True]
    assert repeats == [False, False, False]


def test_an_existing_checkpoint_wins_over_a_new_start_block(
    world: LocalDeployment, database: Database
) -> None:
    first = Indexer(database, world.backend.w3, world.escrow.address, 0, 5)
    reached = first.poll().scanned_through

    second = Indexer(database, world.backend.w3, world.escrow.address, 0, 5, start_block=1_000)

    assert second.poll().scanned_through == reached + 5


@pytest.mark.parametrize(
    ("confirmations", "blocks_per_poll_max", "reorg_depth_max"),
    [(-1, 10, 10), (11, 10, 10), (0, 0, 10), (0, 10_001, 10)],
)
def test_limits_out_of_range_are_refused(
    database: Database, confirmations: int, blocks_per_poll_max: int, reorg_depth_max: int
) -> None:
    with pytest.raises(ValueError):
        Indexer(
            database,
            Web3(),  # never reached: the limits are checked first
            "0x" + "ab" * 20,
            confirmations,
            blocks_per_poll_max,
            reorg_depth_max=reorg_depth_max,
        )
