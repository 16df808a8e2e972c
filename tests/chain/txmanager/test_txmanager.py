"""The transaction manager on anvil (and once on the embedded EVM), on SQLite and PostgreSQL.

Every test checks the two invariants the manager exists for: no operation applied twice (each
transfer goes to its own fresh recipient, whose balance must equal the amount exactly) and
none lost (every submitted record reaches a final status).
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_abi import encode
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils import function_signature_to_4byte_selector, to_checksum_address
from hypothesis import given, settings
from hypothesis import strategies as st
from web3 import Web3
from web3.contract import Contract
from web3.types import RPCEndpoint

from engine.chain.backends import EmbeddedBackend
from engine.chain.backends.anvil import AnvilConfig, AnvilProcess, anvil_accounts
from engine.chain.contracts.escrow import Signer
from engine.chain.contracts.reverts import ContractReverted
from engine.chain.errors import (
    FeeCapTooLow,
    IdempotencyKeyReused,
    InsufficientFundsForGas,
    TxChainMismatch,
    UnknownIdempotencyKey,
    UnknownLane,
)
from engine.chain.networks import ANVIL_CHAIN_ID
from engine.chain.rpc import HttpRpc, Rpc, rpc_for
from engine.chain.txmanager.fees import FeePolicy
from engine.chain.txmanager.manager import TxManager, TxManagerConfig, TxRequest
from engine.chain.txmanager.sign import LaneSigner
from engine.store.db import Database, open_database
from engine.store.transactions import Fees, TxRecord, TxStatus

pytestmark = pytest.mark.anvil

GWEI = 10**9
FEE_CAP = 500 * GWEI
PUMPS_MAX = 30
LANE_ACCOUNTS = range(5, 10)  # anvil accounts the tests sign with; 0 deploys the token


class ManualClock:
    """Time the test moves by hand, so 'stuck for a minute' needs no waiting."""

    def __init__(self, start: int = 1_700_000_000) -> None:
        self.time = start

    def now(self) -> int:
        return self.time

    def advance(self, seconds: int) -> None:
        self.time += seconds


@dataclass
class Node:
    """One anvil for a test module: its URL, a web3 for checks and chain control, a token."""

    process: AnvilProcess
    w3: Web3
    token: Contract

    @property
    def url(self) -> str:
        return self.process.url

    def request(self, method: str, *params: Any) -> Any:
        return self.w3.manager.request_blocking(RPCEndpoint(method), list(params))

    def mine(self, blocks: int = 1) -> None:
        self.request("anvil_mine", blocks)

    def automine(self, on: bool) -> None:
        self.request("evm_setAutomine", on)

    def balance(self, address: str) -> int:
        return int(self.w3.eth.get_balance(to_checksum_address(address)))

    def mined_nonce(self, address: str) -> int:
        return int(self.w3.eth.get_transaction_count(to_checksum_address(address), "latest"))


def start_node(anvil_binary: Path) -> Iterator[Node]:
    with AnvilProcess(AnvilConfig(), binary=anvil_binary) as process:
        w3 = Web3(Web3.HTTPProvider(process.url))
        token = Signer(w3, anvil_accounts(10)[0]).deploy("TestStablecoin")
        yield Node(process, w3, token)


@pytest.fixture(scope="module")
def node_session(anvil_binary: Path) -> Iterator[Node]:
    yield from start_node(anvil_binary)


@pytest.fixture
def node(node_session: Node) -> Iterator[Node]:
    yield from reverted_after(node_session)


def reverted_after(node_session: Node) -> Iterator[Node]:
    """The module's anvil, reverted and back on automine after the test.

    anvil keeps its base fee outside the state a snapshot restores, so it is reset by hand.
    """
    snapshot = node_session.request("evm_snapshot")
    base_fee = node_session.w3.eth.get_block("latest")["baseFeePerGas"]
    yield node_session
    node_session.automine(True)
    node_session.request("evm_revert", snapshot)
    node_session.request("anvil_setNextBlockBaseFeePerGas", hex(base_fee))


def lanes(count: int = 1) -> list[LocalAccount]:
    return list(anvil_accounts(10)[LANE_ACCOUNTS.start : LANE_ACCOUNTS.start + count])


def make_manager(
    database: Database,
    rpc: Rpc,
    signers: Sequence[LocalAccount],
    clock: ManualClock | None = None,
    **overrides: Any,
) -> TxManager:
    fees = overrides.pop("fees", FeePolicy(max_fee_per_gas_cap=FEE_CAP))
    config = TxManagerConfig(chain_id=ANVIL_CHAIN_ID, fees=fees, **overrides)
    return TxManager(database, rpc, signers, config, clock or ManualClock())


def recipient(index: int) -> str:
    """A fresh address per operation, so its balance shows how often the operation applied."""
    return to_checksum_address((0xC0FFEE0000 + index).to_bytes(20, "big"))


def transfers(count: int, prefix: str = "op", first: int = 0) -> list[TxRequest]:
    return [
        TxRequest(recipient(first + i), b"", f"{prefix}-{first + i}", value=1_000 + first + i)
        for i in range(count)
    ]


def drain(manager: TxManager, node: Node | None = None, pumps_max: int = PUMPS_MAX) -> None:
    """Pumps until nothing is open; mines a block between pumps when automine is off."""
    for _ in range(pumps_max):
        if manager.pump().open == 0:
            return
        if node is not None:
            node.mine()
    raise AssertionError(f"records still open after {pumps_max} pumps")


def assert_applied_once(node: Node, records: Sequence[TxRecord]) -> None:
    """Every operation final and confirmed, its effect on chain exactly once."""
    for record in records:
        assert record.is_final and record.status == TxStatus.CONFIRMED, record
        assert node.balance(record.to) == record.value, record.idempotency_key


def refreshed(manager: TxManager, records: Sequence[TxRecord]) -> list[TxRecord]:
    return manager.get_many([record.idempotency_key for record in records])


# -- submit, nonces, idempotency --


def test_submitted_operations_take_consecutive_nonces_and_are_each_applied_once(
    node: Node, database: Database
) -> None:
    (signer,) = lanes()
    start = node.mined_nonce(signer.address)
    manager = make_manager(database, HttpRpc(node.url), [signer])

    records = manager.submit_many(transfers(5))

    assert [record.nonce for record in records] == list(range(start, start + 5))
    assert {record.status for record in records} == {TxStatus.QUEUED}
    drain(manager)
    assert_applied_once(node, refreshed(manager, records))
    assert node.mined_nonce(signer.address) == start + 5


def test_the_same_idempotency_key_returns_the_first_record_and_sends_once(
    node: Node, database: Database
) -> None:
    (signer,) = lanes()
    manager = make_manager(database, HttpRpc(node.url), [signer])
    (request,) = transfers(1)
    first = manager.submit(request.to, request.data, request.value, idempotency_key="op-0")
    drain(manager)

    again = manager.submit(request.to, request.data, request.value, idempotency_key="op-0")

    assert again.id == first.id and again.nonce == first.nonce
    assert again.status == TxStatus.CONFIRMED
    assert manager.pump().open == 0
    assert_applied_once(node, [again])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_key_reused_for_another_payload_is_refused(node: Node, database: Database) -> None:
    manager = make_manager(database, HttpRpc(node.url), lanes())
    manager.submit(recipient(1), b"", 5, idempotency_key="op-1")

    with pytest.raises(IdempotencyKeyReused) as raised:
        manager.submit(recipient(1), b"", 6, idempotency_key="op-1")

    assert raised.value.code == "idempotency_key_reused"


def test_nonces_survive_a_restart_and_continue_the_sequence(
    node: Node, database: Database, db_url: str
) -> None:
    (signer,) = lanes()
    start = node.mined_nonce(signer.address)
    before = make_manager(database, HttpRpc(node.url), [signer]).submit_many(transfers(3))

    reopened = open_database(db_url)
    try:
        after_restart = make_manager(reopened, HttpRpc(node.url), [signer])
        after = after_restart.submit_many(transfers(2, first=3))
        drain(after_restart)
        records = refreshed(after_restart, [*before, *after])
    finally:
        reopened.dispose()

    assert [record.nonce for record in records] == list(range(start, start + 5))
    assert_applied_once(node, records)


def test_lanes_share_the_load_and_concurrent_submits_never_share_a_nonce(
    node: Node, database: Database
) -> None:
    signers = lanes(3)
    manager = make_manager(database, HttpRpc(node.url), signers)
    starts = {str(s.address): node.mined_nonce(s.address) for s in signers}
    threads_count, per_thread = 4, 6
    results: list[TxRecord] = []
    errors: list[BaseException] = []

    def submit_batch(thread: int) -> None:
        try:
            worker = make_manager(database, HttpRpc(node.url), signers)
            for i in range(per_thread):
                (request,) = transfers(1, first=thread * per_thread + i)
                results.append(worker.submit_many([request])[0])
        except BaseException as error:  # reported below; a thread cannot fail the test
            errors.append(error)

    threads = [threading.Thread(target=submit_batch, args=(t,)) for t in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    by_lane: dict[str, list[int]] = {}
    for record in results:
        by_lane.setdefault(record.sender, []).append(record.nonce)
    assert set(by_lane) == {s.address for s in signers}
    for lane, nonces in by_lane.items():
        assert sorted(nonces) == list(range(starts[lane], starts[lane] + len(nonces)))
    assert max(map(len, by_lane.values())) - min(map(len, by_lane.values())) <= threads_count
    drain(manager)
    assert_applied_once(node, refreshed(manager, results))


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_named_lane_is_used_and_an_unknown_lane_is_refused(
    node: Node, database: Database
) -> None:
    first, second = lanes(2)
    manager = make_manager(database, HttpRpc(node.url), [first, second])

    record = manager.submit(recipient(1), b"", 1, idempotency_key="op-1", lane=second.address)

    assert record.sender == second.address
    with pytest.raises(UnknownLane):
        manager.submit(recipient(2), b"", 1, idempotency_key="op-2", lane=recipient(99))


# -- bad input: nothing recorded --


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_insufficient_funds_for_gas_names_the_signer_and_records_nothing(
    node: Node, database: Database
) -> None:
    broke = Account.create()
    manager = make_manager(database, HttpRpc(node.url), [broke])

    with pytest.raises(InsufficientFundsForGas) as raised:
        manager.submit(recipient(1), b"", 1, idempotency_key="op-1")

    assert raised.value.code == "insufficient_funds_for_gas"
    assert raised.value.address == broke.address and raised.value.need_wei > 0
    assert broke.address in str(raised.value)
    with pytest.raises(UnknownIdempotencyKey):
        manager.get("op-1")


def transfer_call(to: str, amount: int) -> bytes:
    selector = function_signature_to_4byte_selector("transfer(address,uint256)")
    return selector + encode(["address", "uint256"], [to, amount])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_call_that_would_revert_raises_the_decoded_error_and_records_nothing(
    node: Node, database: Database
) -> None:
    manager = make_manager(database, HttpRpc(node.url), lanes())

    with pytest.raises(ContractReverted) as raised:
        manager.submit(node.token.address, transfer_call(recipient(1), 1), idempotency_key="op-1")

    assert raised.value.error == "ERC20InsufficientBalance"
    with pytest.raises(UnknownIdempotencyKey):
        manager.get("op-1")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_fee_cap_below_the_base_fee_is_refused(node: Node, database: Database) -> None:
    manager = make_manager(database, HttpRpc(node.url), lanes(), fees=FeePolicy(1))

    with pytest.raises(FeeCapTooLow) as raised:
        manager.submit(recipient(1), b"", 1, idempotency_key="op-1")

    assert raised.value.code == "fee_cap_too_low"


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_node_of_another_chain_is_refused_before_anything_is_recorded(
    node: Node, database: Database
) -> None:
    config = TxManagerConfig(chain_id=1, fees=FeePolicy(FEE_CAP))
    manager = TxManager(database, HttpRpc(node.url), lanes(), config, ManualClock())

    with pytest.raises(TxChainMismatch):
        manager.submit(recipient(1), b"", 1, idempotency_key="op-1")

    with pytest.raises(UnknownIdempotencyKey):
        manager.get("op-1")


# -- mined outcomes --


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_transaction_reverted_when_mined_fails_with_the_decoded_reason(
    node: Node, database: Database
) -> None:
    (signer,) = lanes()
    Signer(node.w3, signer).send(node.token.functions.mint(signer.address, 10))
    manager = make_manager(database, HttpRpc(node.url), [signer])
    # Both fit the balance alone; the second reverts once the first has moved it. The gas
    # limit is given because an estimate would refuse the second one up front.
    spend_all = transfer_call(recipient(1), 10)
    first = manager.submit(node.token.address, spend_all, idempotency_key="a", gas_limit=100_000)
    second = manager.submit(node.token.address, spend_all, idempotency_key="b", gas_limit=100_000)

    drain(manager)

    first, second = refreshed(manager, [first, second])
    assert first.status == TxStatus.CONFIRMED
    assert second.status == TxStatus.FAILED and second.receipt_status == 0
    assert second.error_code == "contract_reverted"
    assert second.error_message is not None
    assert second.error_message.startswith("ERC20InsufficientBalance(")


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_mined_transaction_is_confirmed_only_at_the_confirmation_depth(
    node: Node, database: Database
) -> None:
    manager = make_manager(database, HttpRpc(node.url), lanes(), confirmations=3)
    node.automine(False)
    (record,) = manager.submit_many(transfers(1))
    manager.pump()
    node.mine()

    manager.pump()
    assert manager.get(record.idempotency_key).status == TxStatus.MINED
    node.mine(2)
    manager.pump()
    assert manager.get(record.idempotency_key).status == TxStatus.MINED
    node.mine(1)
    manager.pump()

    assert_applied_once(node, refreshed(manager, [record]))
    events = [entry.event for entry in manager.history(record.idempotency_key)]
    assert events == ["queued", "sent", "mined", "confirmed"]


# -- stuck and dropped transactions (automine off) --


def has_receipt(node: Node, tx_hash: bytes) -> bool:
    return node.request("eth_getTransactionReceipt", "0x" + tx_hash.hex()) is not None


def only_one_attempt_mined(node: Node, manager: TxManager, record: TxRecord) -> TxRecord:
    """The record's final state, after checking that exactly one of its attempts was mined."""
    attempts = manager.attempts(record.idempotency_key)
    mined = [a.tx_hash for a in attempts if has_receipt(node, a.tx_hash)]
    (final,) = refreshed(manager, [record])
    assert mined == [final.tx_hash]
    return final


def assert_bumped(before: Fees, after: Fees) -> None:
    assert after.max_fee_per_gas >= before.max_fee_per_gas * 1125 // 1000
    assert after.max_priority_fee_per_gas >= before.max_priority_fee_per_gas * 1125 // 1000
    assert after.max_priority_fee_per_gas > before.max_priority_fee_per_gas


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_transaction_unmined_for_too_long_is_replaced_and_only_one_is_mined(
    node: Node, database: Database
) -> None:
    clock = ManualClock()
    manager = make_manager(database, HttpRpc(node.url), lanes(), clock, stuck_after_s=30)
    node.automine(False)
    (record,) = manager.submit_many(transfers(1))
    manager.pump()
    clock.advance(29)
    assert manager.pump().bumped == 0

    clock.advance(1)
    assert manager.pump().bumped == 1
    drain(manager, node)

    first, replacement = manager.attempts(record.idempotency_key)
    assert_bumped(first.fees, replacement.fees)
    final = only_one_attempt_mined(node, manager, record)
    assert final.tx_hash == replacement.tx_hash
    assert_applied_once(node, [final])


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_transaction_priced_out_by_the_base_fee_is_resigned_with_market_fees(
    node: Node, database: Database
) -> None:
    manager = make_manager(
        database, HttpRpc(node.url), lanes(), fees=FeePolicy(FEE_CAP, priority_fee_per_gas=1)
    )
    node.automine(False)
    (record,) = manager.submit_many(transfers(1))
    manager.pump()  # offers about 2 x the base fee of ~1 gwei
    node.request("anvil_setNextBlockBaseFeePerGas", hex(100 * GWEI))
    node.mine()  # anvil evicts the offer, now below the base fee

    assert manager.pump().bumped == 1
    drain(manager, node)

    first, replacement = manager.attempts(record.idempotency_key)
    assert_bumped(first.fees, replacement.fees)
    assert replacement.fees.max_fee_per_gas > 80 * GWEI  # the market, not just +12.5 %
    assert_applied_once(node, [only_one_attempt_mined(node, manager, record)])


def is_known(node: Node, tx_hash: bytes) -> bool:
    return node.request("eth_getTransactionByHash", "0x" + tx_hash.hex()) is not None


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_nonce_gap_left_by_a_dropped_transaction_is_repaired_by_rebroadcast(
    node: Node, database: Database
) -> None:
    manager = make_manager(database, HttpRpc(node.url), lanes())
    node.automine(False)
    records = manager.submit_many(transfers(4))
    manager.pump()
    dropped = manager.attempts(records[1].idempotency_key)[0].tx_hash
    node.request("anvil_dropTransaction", "0x" + dropped.hex())  # anvil drops 2 and 3 with it
    node.mine()
    assert not is_known(node, dropped)

    report = manager.pump()

    assert report.rebroadcast == 3
    assert is_known(node, dropped)
    drain(manager, node)
    final = refreshed(manager, records)
    assert_applied_once(node, final)
    for record in final:
        assert [a.tx_hash for a in manager.attempts(record.idempotency_key)] == [record.tx_hash]


# -- the embedded EVM --


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_the_embedded_evm_runs_the_same_path_without_batching(database: Database) -> None:
    backend = EmbeddedBackend()
    signer = backend.accounts()[1]
    config = TxManagerConfig(chain_id=backend.chain_id, fees=FeePolicy(FEE_CAP))
    manager = TxManager(database, rpc_for(backend.w3), [signer], config, ManualClock())

    records = manager.submit_many(transfers(3))
    drain(manager)

    for record in refreshed(manager, records):
        assert record.status == TxStatus.CONFIRMED
        assert backend.w3.eth.get_balance(to_checksum_address(record.to)) == record.value


# -- signing and fee arithmetic (no chain) --


@settings(max_examples=60, deadline=None)
@given(
    nonce=st.integers(0, 2**64 - 2),
    value=st.integers(0, 2**256 - 1),
    data=st.binary(max_size=300),
    gas_limit=st.integers(21_000, 30_000_000),
    tip=st.integers(0, 10**12),
    extra=st.integers(0, 10**12),
    to_int=st.integers(0, 2**160 - 1),
)
def test_lane_signatures_are_byte_identical_to_eth_account(
    nonce: int, value: int, data: bytes, gas_limit: int, tip: int, extra: int, to_int: int
) -> None:
    (account,) = lanes()
    to = to_checksum_address(to_int.to_bytes(20, "big"))
    fees = Fees(tip + extra, tip)

    ours = LaneSigner(account, ANVIL_CHAIN_ID).sign(nonce, to, value, data, gas_limit, fees)

    theirs = account.sign_transaction(
        {
            "type": 2,
            "chainId": ANVIL_CHAIN_ID,
            "nonce": nonce,
            "to": to,
            "value": value,
            "data": data,
            "gas": gas_limit,
            "maxFeePerGas": fees.max_fee_per_gas,
            "maxPriorityFeePerGas": fees.max_priority_fee_per_gas,
        }
    )
    assert ours.raw == bytes(theirs.raw_transaction)
    assert ours.tx_hash == bytes(theirs.hash)


def test_a_lane_signer_never_shows_its_key() -> None:
    (account,) = lanes()
    signer = LaneSigner(account, ANVIL_CHAIN_ID)

    assert account.key.hex() not in repr(signer) and account.address in repr(signer)


@settings(max_examples=100, deadline=None)
@given(
    max_fee=st.integers(1, 10**12),
    tip_share=st.integers(0, 100),
    market_max=st.integers(1, 10**12),
    cap=st.integers(1, 2 * 10**12),
)
def test_a_bump_raises_both_fees_by_the_minimum_step_or_refuses_at_the_cap(
    max_fee: int, tip_share: int, market_max: int, cap: int
) -> None:
    policy = FeePolicy(cap)
    previous = Fees(max_fee, max_fee * tip_share // 100)
    market = Fees(market_max, market_max // 2)

    bumped = policy.bump(previous, market)

    if bumped is None:
        assert previous.max_fee_per_gas * 1125 // 1000 > cap - 1
        return
    assert bumped.max_fee_per_gas <= cap
    assert bumped.max_fee_per_gas * 1000 >= previous.max_fee_per_gas * 1125
    assert bumped.max_priority_fee_per_gas * 1000 >= previous.max_priority_fee_per_gas * 1125
    assert bumped.max_priority_fee_per_gas > previous.max_priority_fee_per_gas


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_a_transaction_whose_block_a_reorg_removes_is_mined_again_once(
    node: Node, database: Database
) -> None:
    manager = make_manager(database, HttpRpc(node.url), lanes(), confirmations=2)
    node.automine(False)
    (record,) = manager.submit_many(transfers(1))
    manager.pump()
    node.mine()
    manager.pump()
    assert manager.get(record.idempotency_key).status == TxStatus.MINED

    node.request("anvil_reorg", 1, [])  # a sibling of the block with the transaction

    assert manager.pump().reorged == 1
    drain(manager, node)
    assert_applied_once(node, refreshed(manager, [record]))
    events = [entry.event for entry in manager.history(record.idempotency_key)]
    assert events[:4] == ["queued", "sent", "mined", "reorged_out"]
    assert events[-2:] == ["mined", "confirmed"]
