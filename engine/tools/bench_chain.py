"""`settle bench chain`: escrow operations per second on anvil, three ways, in one run.

* naive: web3.py's convenience loop, `capture(...).transact()` from anvil's unlocked operator
  account, then wait for the receipt, one operation at a time (DESIGN §7's baseline); also
  measured with a 1 ms receipt poll instead of web3's default 0.1 s (naive_fast_poll);
* engine: the transaction manager sending the same captures as single transactions, signed
  locally and pipelined (many in flight, JSON-RPC batches, nonces from its own lanes);
* batched: the manager sending the captures packed into settleBatch transactions.

Each figure counts operations from the first submit until all are final (confirmed) in the
manager's database, so SQL bookkeeping is part of the price. The payments are authorized
beforehand through settleBatch and are not timed.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, Final

from eth_abi import encode
from eth_utils import function_abi_to_4byte_selector

from engine.chain.backends import AnvilBackend
from engine.chain.backends.anvil import AnvilConfig
from engine.chain.contracts.escrow import BatchOp, Method, encode_batch, terms_tuple
from engine.chain.rpc import HttpRpc
from engine.chain.txmanager.fees import FeePolicy
from engine.chain.txmanager.manager import SystemClock, TxManager, TxManagerConfig, TxRequest
from engine.domain.ids import PaymentTerms
from engine.store.db import open_database, upgrade
from engine.store.transactions import TxStatus
from engine.tools.localnet import UNIT, LocalDeployment, deploy_local

OPS_DEFAULT: Final = 1000
NAIVE_OPS_MAX: Final = 100  # the naive loop is slow; its rate settles within a hundred
# The plain loop waits with web3's default receipt poll, which sleeps 0.1 s whenever anvil has
# not mined yet: on an idle machine that is nearly every time. The same loop polling every
# millisecond is reported beside it, as the best a one-at-a-time loop can do.
FAST_POLL_S: Final = 0.001
BATCH_OPS: Final = 200  # operations per settleBatch (the contract allows 256)
PUMPS_MAX: Final = 10_000
CAPTURE_AMOUNT: Final = 10 * UNIT
FEE_CAP_WEI: Final = 1_000 * 10**9
IN_FLIGHT_MAX: Final = 4096  # anvil's pool takes thousands from one sender
SEND_BATCH_MAX: Final = 1024


def measure(ops: int = OPS_DEFAULT) -> dict[str, float]:
    """Runs the three measurements on a fresh anvil and returns operations per second."""
    assert ops > 0, ops
    naive_ops = min(ops, NAIVE_OPS_MAX)
    with AnvilBackend.launch(AnvilConfig()) as backend, tempfile.TemporaryDirectory() as tmp:
        world = deploy_local(backend)
        payments = _authorized(world, 2 * naive_ops + 2 * ops)
        naive = _naive(world, payments[:naive_ops])
        naive_fast_poll = _naive(world, payments[naive_ops : 2 * naive_ops], FAST_POLL_S)
        rest = payments[2 * naive_ops :]
        manager = _manager(world, Path(tmp) / "bench.db")
        engine = _engine(world, manager, rest[:ops])
        batched = _batched(world, manager, rest[ops:])
    return {
        "naive_ops_per_s": round(naive, 1),
        "engine_ops_per_s": round(engine, 1),
        "batched_ops_per_s": round(batched, 1),
        "naive_fast_poll_ops_per_s": round(naive_fast_poll, 1),
    }


def _authorized(world: LocalDeployment, count: int) -> list[PaymentTerms]:
    template = world.terms(CAPTURE_AMOUNT)
    payments = [replace(template, salt=template.salt + 1 + i) for i in range(count)]
    for start in range(0, count, BATCH_OPS):
        chunk = payments[start : start + BATCH_OPS]
        ops = [
            BatchOp.authorize(terms, CAPTURE_AMOUNT, Method.ALLOWANCE, world.payer_signature(terms))
            for terms in chunk
        ]
        world.operator.send(world.escrow.functions.settleBatch(encode_batch(ops), True))
    return payments


def _calldata(world: LocalDeployment, name: str, *args: object) -> bytes:
    """Calldata encoded with eth_abi directly: web3's contract layer takes milliseconds a call."""
    abi = next(
        item for item in world.escrow.abi if item["type"] == "function" and item["name"] == name
    )
    types = [_abi_type(item) for item in abi["inputs"]]
    return function_abi_to_4byte_selector(abi) + encode(types, list(args))


def _abi_type(item: Mapping[str, Any]) -> str:
    if not item["type"].startswith("tuple"):
        return str(item["type"])
    inner = ",".join(_abi_type(component) for component in item["components"])
    return f"({inner}){item['type'][len('tuple') :]}"


def _naive(
    world: LocalDeployment, payments: Sequence[PaymentTerms], poll_s: float | None = None
) -> float:
    w3 = world.backend.w3
    wait = {} if poll_s is None else {"poll_latency": poll_s}
    started = time.perf_counter()
    for terms in payments:
        call = world.escrow.functions.capture(terms_tuple(terms), 1, CAPTURE_AMOUNT, 0, [])
        tx_hash = call.transact({"from": world.operator.address})
        receipt = w3.eth.wait_for_transaction_receipt(tx_hash, **wait)
        assert receipt["status"] == 1, receipt
    return len(payments) / (time.perf_counter() - started)


def _manager(world: LocalDeployment, path: Path) -> TxManager:
    url = f"sqlite:///{path}"
    upgrade(url)
    config = TxManagerConfig(
        chain_id=world.backend.chain_id,
        fees=FeePolicy(FEE_CAP_WEI),
        in_flight_per_lane_max=IN_FLIGHT_MAX,
        lane_scan_max=IN_FLIGHT_MAX,
        send_batch_max=SEND_BATCH_MAX,
    )
    rpc_url = str(world.backend.w3.provider.endpoint_uri)  # type: ignore[attr-defined]
    return TxManager(
        open_database(url), HttpRpc(rpc_url), [world.operator.account], config, SystemClock()
    )


def _engine(world: LocalDeployment, manager: TxManager, payments: Sequence[PaymentTerms]) -> float:
    escrow = world.escrow.address
    started = time.perf_counter()
    requests = [
        TxRequest(
            escrow,
            _calldata(world, "capture", terms_tuple(terms), 1, CAPTURE_AMOUNT, 0, []),
            f"capture-{terms.salt}",
        )
        for terms in payments
    ]
    _run(manager, requests)
    return len(payments) / (time.perf_counter() - started)


def _batched(world: LocalDeployment, manager: TxManager, payments: Sequence[PaymentTerms]) -> float:
    escrow = world.escrow.address
    started = time.perf_counter()
    requests = []
    for start in range(0, len(payments), BATCH_OPS):
        chunk = payments[start : start + BATCH_OPS]
        ops = encode_batch(BatchOp.capture(terms, 1, CAPTURE_AMOUNT, 0) for terms in chunk)
        data = _calldata(world, "settleBatch", ops, True)
        requests.append(TxRequest(escrow, data, f"batch-{chunk[0].salt}"))
    _run(manager, requests)
    return len(payments) / (time.perf_counter() - started)


def _run(manager: TxManager, requests: Sequence[TxRequest]) -> None:
    """Submits everything, then pumps until every transaction is final and confirmed."""
    manager.submit_many(requests)
    for _ in range(PUMPS_MAX):
        if manager.pump().open == 0:
            break
    records = manager.get_many([request.idempotency_key for request in requests])
    failed = [record for record in records if record.status != TxStatus.CONFIRMED]
    assert not failed, failed[:3]
