"""The transaction manager under faults: lost and late answers, a dead node, a crash between
send and record, nonces used behind its back. Faults come from the proxy in
engine/tools/fault_proxy.py.

Invariants, in every test: no operation applied twice (each goes to its own recipient, whose
balance must equal the amount exactly), none lost (every record ends final), and nothing is
recorded as acknowledged by the node that was not.
"""

from __future__ import annotations

import contextlib
import os
import random
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from engine.chain.errors import RpcUnavailable, UnknownIdempotencyKey
from engine.chain.networks import ANVIL_CHAIN_ID
from engine.chain.rpc import HttpRpc
from engine.chain.txmanager.manager import TxManager
from engine.chain.txmanager.sign import LaneSigner
from engine.store.db import Database, open_database
from engine.store.transactions import Fees, TxStatus
from engine.tools.fault_proxy import Fault, FaultProxy
from tests.chain.txmanager.test_txmanager import (
    ManualClock,
    Node,
    assert_applied_once,
    drain,
    has_receipt,
    is_known,
    lanes,
    make_manager,
    recipient,
    refreshed,
    reverted_after,
    start_node,
    transfers,
)

pytestmark = [pytest.mark.anvil, pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)]

RPC_TIMEOUT_S = 0.5
SEND = "eth_sendRawTransaction"


@pytest.fixture(scope="module")
def node_session(anvil_binary: Path) -> Iterator[Node]:
    yield from start_node(anvil_binary)


@pytest.fixture
def node(node_session: Node) -> Iterator[Node]:
    yield from reverted_after(node_session)


@pytest.fixture
def proxy(node: Node) -> Iterator[FaultProxy]:
    with FaultProxy(node.process.port, hold_s_max=2 * RPC_TIMEOUT_S) as proxy:
        yield proxy


def through(
    proxy: FaultProxy, database: Database, clock: ManualClock | None = None, **overrides: Any
) -> TxManager:
    """A manager whose every RPC call passes the proxy, with a short read timeout."""
    rpc = HttpRpc(proxy.url, timeout_s=RPC_TIMEOUT_S)
    return make_manager(database, rpc, lanes(), clock, **overrides)


def test_a_send_whose_answer_is_lost_is_found_by_lookup_and_not_sent_again(
    node: Node, proxy: FaultProxy, database: Database
) -> None:
    manager = through(proxy, database)
    node.automine(False)
    records = manager.submit_many(transfers(2))
    proxy.inject(Fault.DROP_RESPONSE, SEND)

    with pytest.raises(RpcUnavailable) as raised:
        manager.pump()

    assert raised.value.maybe_delivered
    unacknowledged = refreshed(manager, records)
    assert {record.status for record in unacknowledged} == {TxStatus.QUEUED}
    assert all(record.attempts == 1 for record in unacknowledged)
    assert manager.pump().found == 2
    assert {record.status for record in refreshed(manager, records)} == {TxStatus.SENT}
    drain(manager, node)
    assert proxy.forwarded[SEND] == 2
    assert_applied_once(node, refreshed(manager, records))


def test_a_send_that_times_out_is_settled_from_its_receipt_without_a_second_send(
    node: Node, proxy: FaultProxy, database: Database
) -> None:
    manager = through(proxy, database)
    node.automine(False)
    records = manager.submit_many(transfers(3))
    proxy.inject(Fault.HOLD_RESPONSE, SEND)

    with pytest.raises(RpcUnavailable):
        manager.pump()
    node.mine()

    assert manager.pump().confirmed == 3
    assert proxy.forwarded[SEND] == 3
    assert_applied_once(node, refreshed(manager, records))


def test_a_fresh_manager_resolves_sends_a_crashed_one_never_saw_acknowledged(
    node: Node, proxy: FaultProxy, database: Database, db_url: str
) -> None:
    node.automine(False)
    crashed = through(proxy, database)
    records = crashed.submit_many(transfers(3))
    proxy.inject(Fault.DROP_RESPONSE, SEND)
    with pytest.raises(RpcUnavailable):
        crashed.pump()
    del crashed  # the process dies before it learns what the node did

    reopened = open_database(db_url)
    try:
        restarted = through(proxy, reopened)
        assert restarted.pump().found == 3
        drain(restarted, node)
        final = refreshed(restarted, records)
    finally:
        reopened.dispose()

    assert proxy.forwarded[SEND] == 3
    assert_applied_once(node, final)


def sign_out_of_band(record_nonce: int, to: str, value: int, tip: int) -> bytes:
    """What a process that died before recording its attempt would have sent."""
    (account,) = lanes()
    fees = Fees(50 * 10**9, tip)
    return LaneSigner(account, ANVIL_CHAIN_ID).sign(record_nonce, to, value, b"", 21_000, fees).raw


def send_and_wait(node: Node, raw: bytes) -> None:
    tx_hash = node.request(SEND, "0x" + raw.hex())
    node.w3.eth.wait_for_transaction_receipt(tx_hash, timeout=10, poll_latency=0.01)


def test_a_nonce_used_outside_the_records_with_this_payload_is_adopted_not_resent(
    node: Node, proxy: FaultProxy, database: Database
) -> None:
    manager = through(proxy, database)
    (record,) = manager.submit_many(transfers(1))
    raw = sign_out_of_band(record.nonce, record.to, record.value, tip=7)
    send_and_wait(node, raw)  # sent, but never recorded as an attempt

    report = manager.pump()

    assert report.adopted == 1
    (final,) = refreshed(manager, [record])
    assert manager.attempts(record.idempotency_key) == []
    assert has_receipt(node, final.tx_hash or b"")
    assert proxy.forwarded[SEND] == 0
    assert_applied_once(node, [final])


def test_a_nonce_used_by_another_payload_marks_the_record_replaced_and_the_lane_goes_on(
    node: Node, proxy: FaultProxy, database: Database
) -> None:
    manager = through(proxy, database)
    (record,) = manager.submit_many(transfers(1))
    intruder = sign_out_of_band(record.nonce, recipient(999), 1, tip=1)
    send_and_wait(node, intruder)

    manager.pump()

    (replaced,) = refreshed(manager, [record])
    assert replaced.is_final and replaced.status == TxStatus.REPLACED
    assert replaced.error_code == "nonce_used_elsewhere"
    assert node.balance(record.to) == 0  # the operation did not happen, and says so
    (later,) = manager.submit_many(transfers(1, first=1))
    assert later.nonce == record.nonce + 1
    drain(manager)
    assert_applied_once(node, refreshed(manager, [later]))


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def test_a_down_node_fails_submit_with_a_typed_error_records_nothing_and_hides_the_url_key(
    database: Database,
) -> None:
    api_key = "k3y-0f-the-provider"
    down = HttpRpc(f"http://127.0.0.1:{closed_port()}/v2/{api_key}", timeout_s=RPC_TIMEOUT_S)
    manager = make_manager(database, down, lanes())

    with pytest.raises(RpcUnavailable) as raised:
        manager.submit(recipient(1), b"", 1, idempotency_key="op-1")

    assert raised.value.code == "rpc_unavailable" and not raised.value.maybe_delivered
    assert "check that the node is running" in str(raised.value)
    assert api_key not in str(raised.value)
    with pytest.raises(UnknownIdempotencyKey):
        manager.get("op-1")


def test_a_pump_cut_off_before_sending_signs_nothing_and_the_next_one_sends(
    node: Node, proxy: FaultProxy, database: Database
) -> None:
    manager = through(proxy, database)
    records = manager.submit_many(transfers(2))
    proxy.inject(Fault.REFUSE, times=1)

    with pytest.raises(RpcUnavailable):
        manager.pump()

    for record in refreshed(manager, records):
        assert record.status == TxStatus.QUEUED and record.attempts == 0
    drain(manager)
    assert_applied_once(node, refreshed(manager, records))


def test_connections_dropped_while_polling_receipts_lose_nothing(
    node: Node, proxy: FaultProxy, database: Database
) -> None:
    manager = through(proxy, database, confirmations=1)
    node.automine(False)
    records = manager.submit_many(transfers(4))
    manager.pump()
    node.mine()
    proxy.inject(Fault.DROP_RESPONSE, "eth_getTransactionReceipt", times=2)

    for _ in range(2):
        with pytest.raises(RpcUnavailable):
            manager.pump()

    drain(manager, node)
    assert proxy.forwarded[SEND] == 4
    assert_applied_once(node, refreshed(manager, records))


PUMPS_PER_RUN = 20
FAULT_WAIT_PUMPS = 2
FAULTS_MIN = 8
OPERATIONS_PER_PUMP = 3


def test_random_faults_over_many_operations_apply_each_exactly_once(
    node: Node, proxy: FaultProxy, database: Database
) -> None:
    """Lost answers, timeouts, refusals and delays on any call, transactions dropped from the
    pool, time passing: operations arrive while faults fire, and a submit that fails is simply
    submitted again under the same key."""
    rng = random.Random(int(os.environ.get("TXMANAGER_FAULT_SEED", "20241125")))
    clock = ManualClock()
    manager = through(proxy, database, clock=clock, stuck_after_s=30)
    node.automine(False)
    requests = transfers(PUMPS_PER_RUN * OPERATIONS_PER_PUMP)
    arriving = list(requests)
    methods = [SEND, "eth_getTransactionReceipt", "eth_getTransactionByHash", None]
    faults = [Fault.DROP_RESPONSE, Fault.HOLD_RESPONSE, Fault.REFUSE, Fault.DELAY]
    dropped = 0
    for pump in range(PUMPS_PER_RUN):
        # A fault waits a few pumps for the call it is aimed at, then makes way for another.
        if pump % FAULT_WAIT_PUMPS == 0 or not proxy.armed:
            proxy.clear()
            proxy.inject(rng.choice(faults), rng.choice(methods), delay_s=0.05)
        with contextlib.suppress(RpcUnavailable):  # nothing recorded: submitted again later
            manager.submit_many(arriving[:OPERATIONS_PER_PUMP])
            del arriving[:OPERATIONS_PER_PUMP]
        with contextlib.suppress(RpcUnavailable):  # the fault may cut this pump short
            manager.pump()
        submitted = requests[: len(requests) - len(arriving)]
        in_pool = [
            attempt.tx_hash
            for request in rng.sample(submitted, min(1, len(submitted)))
            for attempt in manager.attempts(request.idempotency_key)
            if is_known(node, attempt.tx_hash) and not has_receipt(node, attempt.tx_hash)
        ]
        if in_pool:
            node.request("anvil_dropTransaction", "0x" + in_pool[0].hex())
            dropped += 1
        node.mine()
        clock.advance(rng.choice([0, 31]))

    proxy.clear()
    manager.submit_many(arriving)
    drain(manager, node)
    assert dropped > 0 and sum(proxy.fired.values()) >= FAULTS_MIN
    assert_applied_once(node, manager.get_many([r.idempotency_key for r in requests]))
