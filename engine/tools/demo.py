"""`settle demo --db URL`: a mix of payments through the whole pipeline on the embedded EVM.

Every payment goes through commands, the outbox, the relay, the escrow, the indexer and the
chain mirror, in three rounds (authorize; capture or void; refund or void the rest), each run
until the engine is quiescent. The summary is then read back from the books and checked
against the chain: statuses, the trial balance per asset, reconciliation (engine.ops.reconcile)
and the event store's hash chains.

The embedded chain is kept beside a SQLite database (engine.chain.backends.embedded_state), so the
database and the chain it describes stay together; each run deploys a new escrow, so the
database must not hold payments of an earlier one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from engine.chain.backends import EmbeddedBackend
from engine.chain.backends.embedded_state import state_path_for
from engine.domain.status import PaymentStatus
from engine.ops.reconcile import ChainTarget, reconcile
from engine.pipeline.engine import SettlementEngine
from engine.saga.orchestrator import Orchestrator
from engine.store.db import open_database, upgrade
from engine.store.event_store import EventStore
from engine.store.ledger import Ledger
from engine.store.projections import count_by_status
from engine.store.redaction import redact_url
from engine.tools.localnet import UNIT, LocalDeployment, local_engine

FEE_BPS: Final = 50
AMOUNT: Final = 100 * UNIT
ROUNDS: Final = ("authorize", "capture or void", "refund or release", "summary")
# Settled: captured, and nothing of it left on hold in the escrow (a partial capture still
# holds the rest, a canceled or uncaptured payment moved no money to the merchant).
SETTLED: Final = frozenset(
    {PaymentStatus.SUCCEEDED, PaymentStatus.PARTIALLY_REFUNDED, PaymentStatus.REFUNDED}
)


class DemoDatabaseInUse(RuntimeError):
    """The demo deploys a fresh escrow; payments of an earlier one would not reconcile."""

    code = "demo_database_in_use"


# Per payment: (round 2, round 3) as (command, share of the amount in percent).
_PLAN: Final = (
    (("capture", 100), None),  # succeeded
    (("capture", 100), ("refund", 30)),  # partially_refunded
    (("capture", 100), ("refund", 100)),  # refunded
    (("capture", 40), None),  # partially_captured
    (("capture", 60), ("void", 0)),  # succeeded, the rest of the hold released
    (("void", 0), None),  # canceled
    (None, None),  # requires_capture
    (("capture", 25), ("capture", 75)),  # succeeded in two captures
)


def run_demo(db_url: str, on_round: Callable[[str], None] = lambda _: None) -> dict[str, Any]:
    upgrade(db_url)
    database = open_database(db_url)
    try:
        with database.snapshot() as conn:
            existing = sum(count_by_status(conn).values())
    finally:
        database.dispose()
    if existing:
        raise DemoDatabaseInUse(
            f"{redact_url(db_url)} already holds {existing} payments of an earlier demo; "
            "pass a fresh --db"
        )
    backend = EmbeddedBackend(state_path_for(db_url))
    try:
        engine = local_engine(db_url, backend, sagas=Orchestrator)
        try:
            return settle_mix(engine, on_round)
        finally:
            engine.close()
    finally:
        backend.close()


def settle_mix(
    engine: SettlementEngine[LocalDeployment], on_round: Callable[[str], None] = lambda _: None
) -> dict[str, Any]:
    """Run the demo's payments through ``engine`` and return ``summary``."""
    world = engine.deployment
    service = engine.service
    on_round(ROUNDS[0])
    payment_ids = []
    for index in range(len(_PLAN)):
        terms = world.terms(AMOUNT)
        outcome = service.create(
            f"demo-create-{index}", terms, AMOUNT, world.payer_signature(terms)
        )
        payment_ids.append(outcome.payment_id)
    engine.run_until_quiescent()
    for round_index, round_name in ((0, ROUNDS[1]), (1, ROUNDS[2])):
        on_round(round_name)
        for index, (payment_id, plan) in enumerate(zip(payment_ids, _PLAN, strict=True)):
            step = plan[round_index]
            if step is None:
                continue
            command, percent = step
            key = f"demo-{round_index}-{index}"
            if command == "capture":
                service.capture(key, payment_id, AMOUNT * percent // 100, FEE_BPS)
            elif command == "refund":
                service.refund(key, payment_id, AMOUNT * percent // 100)
            else:
                service.void(key, payment_id)
        engine.run_until_quiescent()
    on_round(ROUNDS[3])
    return summary(engine)


def summary(engine: SettlementEngine[LocalDeployment]) -> dict[str, Any]:
    """What the books say after the run, checked against the chain."""
    ledger = Ledger()
    with engine.db.snapshot() as conn:
        by_status = count_by_status(conn)
        balances = ledger.trial_balance(conn)
        audit = EventStore(engine.db).verify(conn)
    target = ChainTarget(engine.backend.w3, engine.chain_id, engine.deployment.record.escrow)
    report = reconcile(engine.db, target, now=engine.now())
    token = engine.deployment.token
    symbol = str(token.functions.symbol().call())
    return {
        "payments": {
            "total": sum(by_status.values()),
            "settled": sum(count for status, count in by_status.items() if status in SETTLED),
            "by_status": by_status,
        },
        "assets": {
            str(asset): {
                "symbol": symbol if asset.token == token.address else asset.token,
                "chain_id": asset.chain_id,
                "token": asset.token,
            }
            for asset in balances
        },
        "ledger": {"trial_balance": {str(asset): b.posted for asset, b in balances.items()}},
        "reconciliation": {
            "matched": report.matched,
            "mismatched": report.mismatched,
            "payments": sum(by_status.values()),
            "assets": len(balances),
        },
        "audit": {"ok": audit.ok, "streams": audit.streams, "events": audit.events},
    }
