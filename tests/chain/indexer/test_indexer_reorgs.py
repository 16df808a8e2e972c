"""The indexer against reorgs on anvil: `anvil_reorg` of random depth with replacement
transactions, a reorg deeper than the confirmation depth, a restart across a reorg, a block
that comes back, a chain that got shorter, and a reorg deeper than the hashes kept.

Invariants after polling until quiet: the consumer's live logs equal the canonical chain's
logs from eth_getLogs, every delivered log the chain lost was reported removed, and with a
confirmation depth at least the reorg depth nothing removed had been delivered as confirmed.

These tests own their anvil: reorgs rewrite history that the suite's shared node must keep.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Final, cast

import pytest
from sqlalchemy import func, select
from web3.types import Nonce, RPCEndpoint, TxParams, Wei

from engine.chain.backends import AnvilBackend
from engine.chain.contracts.escrow import Method, legs_tuple, terms_tuple
from engine.chain.contracts.logs import Authorized
from engine.chain.indexer.log_indexer import Indexer, LogStage, PollResult, ReorgTooDeep
from engine.domain.ids import PaymentTerms
from engine.domain.money import Leg
from engine.store.db import Database
from engine.store.schema import indexer_logs
from engine.tools.localnet import UNIT, LocalDeployment, deploy_local
from tests.chain.indexer.test_indexer import Consumer, chain_logs, poll_until_quiet

pytestmark = pytest.mark.anvil

REORG_DEPTH_MAX: Final = 5
ROUNDS: Final = 8
# Replacement transactions are signed without an estimate: the state they run on exists
# only after the reorg. Fees well above anything a quiet anvil asks.
REPLACEMENT_GAS: Final = 500_000
REPLACEMENT_MAX_FEE: Final = 100 * 10**9
REPLACEMENT_PRIORITY_FEE: Final = 10**9
# A fixed base fee makes a block rebuilt from the same parent, time and transaction hash
# the same as before (anvil does not restore its fee state on evm_revert).
BASE_FEE: Final = 10**9


@pytest.fixture(scope="module")
def own_chain(anvil_binary: Path) -> Iterator[LocalDeployment]:
    with AnvilBackend.launch() as backend:
        yield deploy_local(backend)


@pytest.fixture
def forkable(own_chain: LocalDeployment) -> Iterator[LocalDeployment]:
    """The deployment, with ten blocks on top so that no reorg reaches it, reverted after."""
    token = own_chain.backend.snapshot()
    resync(own_chain)
    own_chain.backend.mine(10)
    yield own_chain
    own_chain.backend.revert(token)


def resync(world: LocalDeployment) -> None:
    for signer in (world.admin, world.operator, world.arbiter, world.payer, world.merchant):
        signer.resync()


def rpc(world: LocalDeployment, method: str, *params: object) -> object:
    return world.backend.w3.manager.request_blocking(RPCEndpoint(method), list(params))


def signed_authorization(world: LocalDeployment, terms: PaymentTerms, nonce: int) -> bytes:
    call = world.escrow.functions.authorize(
        terms_tuple(terms), terms.max_amount, Method.ALLOWANCE, world.payer_signature(terms)
    )
    params: TxParams = {
        "from": world.operator.address,
        "nonce": Nonce(nonce),
        "gas": REPLACEMENT_GAS,
        "maxFeePerGas": Wei(REPLACEMENT_MAX_FEE),
        "maxPriorityFeePerGas": Wei(REPLACEMENT_PRIORITY_FEE),
        "chainId": world.backend.chain_id,
    }
    tx = cast(dict[str, Any], call.build_transaction(params))
    return bytes(world.operator.account.sign_transaction(tx).raw_transaction)


def reorg(world: LocalDeployment, depth: int, replacements: Sequence[PaymentTerms] = ()) -> None:
    """Replace the last `depth` blocks by as many new ones; the new blocks hold, in order, an
    authorization of each of `replacements` (at random offsets, signed for the fork's state)."""
    w3 = world.backend.w3
    fork = w3.eth.block_number - depth
    nonce = w3.eth.get_transaction_count(world.operator.address, fork)
    offsets = sorted(random.Random(depth).randrange(depth) for _ in replacements)
    txs = [
        ["0x" + signed_authorization(world, terms, nonce + index).hex(), offset]
        for index, (terms, offset) in enumerate(zip(replacements, offsets, strict=True))
    ]
    rpc(world, "anvil_reorg", depth, txs)
    resync(world)


def act(world: LocalDeployment, rng: random.Random, holds: list[PaymentTerms]) -> None:
    """One escrow operation (or an empty block), chosen by `rng`, on holds still on chain."""
    choice = rng.randrange(4)
    open_holds = [t for t in holds if world.state(t) == (t.max_amount, 0, 1)]
    if choice == 0 or (choice == 1 and not open_holds):
        terms = world.terms(10 * UNIT)
        world.authorize(terms)
        holds.append(terms)
    elif choice == 1:
        terms = rng.choice(open_holds)
        legs = legs_tuple([Leg(world.other.address, 1_000)])
        call = world.escrow.functions.capture(terms_tuple(terms), 1, 4 * UNIT, 50, legs)
        world.operator.send(call)
    elif choice == 2:
        call = world.escrow.functions.approveFunding(world.other.address, rng.randrange(2) * UNIT)
        world.merchant.send(call)
    else:
        world.backend.mine()


def take(indexer: Indexer, consumer: Consumer) -> PollResult:
    result = indexer.poll()
    consumer.apply(result)
    indexer.acknowledge(result)
    return result


def test_random_reorgs_leave_the_indexer_output_equal_to_the_canonical_chain(
    forkable: LocalDeployment, database: Database
) -> None:
    world = forkable
    rng = random.Random(31337)
    # Small steps, so that catching up, reorgs and confirmations interleave.
    indexer = Indexer(database, world.backend.w3, world.escrow.address, REORG_DEPTH_MAX, 4)
    consumer = Consumer()
    holds: list[PaymentTerms] = []

    for _ in range(ROUNDS):
        for _ in range(rng.randint(2, 5)):
            act(world, rng, holds)
            if rng.random() < 0.5:
                take(indexer, consumer)
        if rng.random() < 0.75:  # most reorgs hit blocks the consumer has seen
            while take(indexer, consumer).scanned_through < world.backend.w3.eth.block_number:
                pass
        depth = rng.randint(1, REORG_DEPTH_MAX)
        reorg(world, depth, [world.terms(10 * UNIT) for _ in range(rng.randint(0, 2))])
        if rng.random() < 0.5:  # at the same height: found by re-checking the stored tip
            take(indexer, consumer)
    world.backend.mine(REORG_DEPTH_MAX)
    poll_until_quiet(indexer, consumer)

    on_chain = chain_logs(world.backend.w3, world.escrow.address)
    assert consumer.live == on_chain
    assert on_chain.keys() <= consumer.keys(LogStage.CONFIRMED)
    delivered = consumer.keys(LogStage.PENDING) | consumer.keys(LogStage.CONFIRMED)
    removed = consumer.keys(LogStage.REMOVED)
    assert removed == delivered - on_chain.keys()
    assert not removed & consumer.keys(LogStage.CONFIRMED)
    assert removed, "the reorgs removed no delivered log: the test exercised nothing"
    assert consumer.blocks_rolled_back > 0


def test_a_reorg_as_deep_as_the_confirmation_depth_removes_only_logs_not_yet_confirmed(
    forkable: LocalDeployment, database: Database
) -> None:
    """Each reorg replaces exactly the block of a fresh log and the blocks on top of it: the
    deepest reach a reorg of that depth has, one block short of confirming the log."""
    world = forkable
    indexer = Indexer(database, world.backend.w3, world.escrow.address, REORG_DEPTH_MAX, 50)
    consumer = Consumer()
    world.backend.mine(REORG_DEPTH_MAX)
    poll_until_quiet(indexer, consumer)

    for depth in range(1, REORG_DEPTH_MAX + 1):
        world.authorize(world.terms())
        if depth > 1:
            world.backend.mine(depth - 1)
        seen = take(indexer, consumer)
        reorg(world, depth)
        result = take(indexer, consumer)

        assert (seen.confirmed, len(seen.pending)) == ([], 1)
        assert (result.removed, result.reorg_depth) == (seen.pending, depth)
    assert not consumer.keys(LogStage.REMOVED) & consumer.keys(LogStage.CONFIRMED)


def test_a_reorg_deeper_than_the_confirmation_depth_reports_a_confirmed_log_as_removed(
    forkable: LocalDeployment, database: Database
) -> None:
    world = forkable
    indexer = Indexer(database, world.backend.w3, world.escrow.address, 1, 50)
    consumer = Consumer()
    poll_until_quiet(indexer, consumer)
    world.authorize(world.terms())
    world.backend.mine(2)
    [confirmed] = take(indexer, consumer).confirmed

    reorg(world, 3)
    result = take(indexer, consumer)

    assert result.removed == [confirmed]
    assert result.reorg_depth == 3
    assert confirmed.key not in chain_logs(world.backend.w3, world.escrow.address)


def test_an_indexer_restarted_after_a_reorg_finds_it_from_the_stored_hashes(
    forkable: LocalDeployment, database: Database
) -> None:
    world = forkable
    before = Indexer(database, world.backend.w3, world.escrow.address, 3, 50)
    consumer = Consumer()
    poll_until_quiet(before, consumer)
    world.authorize(world.terms())
    [pending] = take(before, consumer).pending
    replacement = world.terms()

    reorg(world, 2, [replacement])
    after = Indexer(database, world.backend.w3, world.escrow.address, 3, 50)
    result = take(after, consumer)

    assert result.reorg_depth == 2
    assert result.removed == [pending]
    assert [log.event for log in result.pending] == [
        Authorized(
            world.payment_hash(replacement), replacement, replacement.max_amount, Method.ALLOWANCE
        )
    ]
    assert consumer.live == chain_logs(world.backend.w3, world.escrow.address)


def test_a_log_whose_block_comes_back_is_delivered_again_and_then_confirmed(
    forkable: LocalDeployment, database: Database
) -> None:
    world = forkable
    backend = world.backend
    indexer = Indexer(database, backend.w3, world.escrow.address, 2, 50)
    consumer = Consumer()
    backend.mine(2)
    poll_until_quiet(indexer, consumer)
    fork = backend.snapshot()
    timestamp = backend.now() + 100
    raw = signed_authorization(
        world, world.terms(), backend.w3.eth.get_transaction_count(world.operator.address)
    )

    def mine_the_authorization() -> bytes:
        backend.set_next_block_timestamp(timestamp)
        rpc(world, "anvil_setNextBlockBaseFeePerGas", hex(BASE_FEE))
        # The receipt, not "latest", names the block the transaction landed in.
        sent = backend.w3.eth.send_raw_transaction(raw)
        return bytes(backend.w3.eth.wait_for_transaction_receipt(sent)["blockHash"])

    original = mine_the_authorization()
    [pending] = take(indexer, consumer).pending
    backend.revert(fork)
    fork = backend.snapshot()
    backend.mine()  # an empty block in its place
    gone = take(indexer, consumer)
    backend.revert(fork)
    back = mine_the_authorization()
    returned = take(indexer, consumer)
    backend.mine(2)
    final = take(indexer, consumer)

    assert back == original == pending.block_hash
    assert (gone.removed, gone.reorg_depth) == ([pending], 1)
    assert (returned.pending, returned.reorg_depth) == ([pending], 1)
    assert final.confirmed == [pending]
    with database.snapshot() as conn:
        rows = conn.execute(
            select(func.count())
            .select_from(indexer_logs)
            .where(indexer_logs.c.block_hash == pending.block_hash)
        ).scalar_one()
    assert rows == 1


def test_logs_of_blocks_a_shorter_chain_dropped_are_removed_once_a_new_block_replaces_them(
    forkable: LocalDeployment, database: Database
) -> None:
    """A node whose head is below the last block scanned may just lag behind its peers, so
    nothing is removed until a block the indexer scanned is seen replaced."""
    world = forkable
    backend = world.backend
    indexer = Indexer(database, backend.w3, world.escrow.address, 3, 50)
    consumer = Consumer()
    poll_until_quiet(indexer, consumer)
    fork = backend.snapshot()
    world.authorize(world.terms())
    backend.mine()
    [pending] = take(indexer, consumer).pending

    backend.revert(fork)
    while_shorter = take(indexer, consumer)
    backend.mine()
    replaced = take(indexer, consumer)

    assert (while_shorter.notices, while_shorter.reorg_depth) == ((), 0)
    assert (replaced.removed, replaced.reorg_depth) == ([pending], 2)
    assert consumer.live == chain_logs(backend.w3, world.escrow.address)


def test_a_reorg_deeper_than_the_kept_block_hashes_raises_ReorgTooDeep(
    forkable: LocalDeployment, database: Database
) -> None:
    world = forkable
    indexer = Indexer(database, world.backend.w3, world.escrow.address, 0, 50, reorg_depth_max=3)
    poll_until_quiet(indexer, Consumer())

    reorg(world, 5)

    with pytest.raises(ReorgTooDeep) as raised:
        indexer.poll()
    assert raised.value.code == "reorg_too_deep"
