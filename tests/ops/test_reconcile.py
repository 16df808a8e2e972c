"""Reconciliation against a real escrow on the embedded EVM, on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from engine.chain.backends import AnvilBackend, EmbeddedBackend
from engine.chain.backends.anvil import AnvilProcess
from engine.chain.binding import bind
from engine.chain.contracts.escrow import terms_tuple
from engine.chain.errors import RpcUrlMissing
from engine.cli.reconcile import cmd_reconcile
from engine.domain.events import (
    Authorized,
    Captured,
    Conflicted,
    ConflictResolved,
    Event,
    PaymentRequested,
)
from engine.domain.ids import IdPrefix, new_id
from engine.domain.money import fee_for
from engine.domain.payment import Payment, PaymentStatus, apply
from engine.ops import reconcile as reconcile_module
from engine.ops.reconcile import ChainTarget, ProviderView, reconcile
from engine.store.db import Database
from engine.store.event_store import EventStore
from engine.store.ledger import Ledger
from engine.store.ledger_accounts import AccountKey, AccountKind, AssetKey
from engine.store.ledger_entries import EntryState, NewEntry, Transfer
from engine.store.ledger_events import entry_for
from engine.store.projections import load, project, stored_form
from engine.store.replay import verify_replay
from engine.tools.localnet import UNIT, LocalDeployment, deploy_local
from tests.store.test_replay import book

FEE_BPS = 100
NOW = 1_800_000_000


@pytest.fixture(scope="module")
def deployment() -> Iterator[LocalDeployment]:
    with EmbeddedBackend() as backend:
        yield deploy_local(backend)


@pytest.fixture
def world(deployment: LocalDeployment) -> Iterator[LocalDeployment]:
    token = deployment.backend.snapshot()
    yield deployment
    deployment.backend.revert(token)
    for signer in (deployment.operator, deployment.arbiter, deployment.payer, deployment.merchant):
        signer.resync()


def _target(world: LocalDeployment) -> ChainTarget:
    return ChainTarget(world.backend.w3, world.backend.chain_id, world.escrow.address)


def _capture_on_chain(world: LocalDeployment, payment: Payment, amount: int) -> None:
    seq = world.state(payment.terms)[2]
    call = world.escrow.functions.capture(terms_tuple(payment.terms), seq, amount, FEE_BPS, [])
    world.operator.send(call)


def _held_payment(database: Database, world: LocalDeployment, captured: int = 0) -> Payment:
    """A payment authorized (and optionally captured) on chain and booked like the mirror."""
    terms = world.terms(100 * UNIT, max_fee_bps=FEE_BPS)
    world.authorize(terms)
    pid = new_id(IdPrefix.PAYMENT)
    requested = PaymentRequested(payment_id=pid, at=NOW, terms=terms, amount=100 * UNIT)
    chain_id = world.backend.chain_id
    payment = book(database, None, requested, chain_id=chain_id)
    authorized = Authorized(payment_id=pid, at=NOW, amount=100 * UNIT)
    payment = book(database, payment, authorized, chain_id=chain_id)
    if captured:
        _capture_on_chain(world, payment, captured)
        fee = fee_for(captured, FEE_BPS)
        event = Captured(payment_id=pid, at=NOW, amount=captured, fee=fee)
        payment = book(database, payment, event, chain_id=chain_id)
    return payment


def _kinds(database: Database, payment_id: str) -> list[str]:
    with database.snapshot() as conn:
        return [stored.kind for stored in EventStore(database).read(conn, payment_id)]


def _conflicts(database: Database, payment_id: str) -> int:
    return _kinds(database, payment_id).count(Conflicted.kind)


def _projected(database: Database, payment_id: str) -> Payment:
    with database.snapshot() as conn:
        current = load(conn, payment_id)
    assert current is not None
    return current.payment


def _book_bogus_capture(
    database: Database, world: LocalDeployment, payment: Payment, key: str = "bogus"
) -> None:
    """A posted entry paying the merchant 5 units that the chain never moved."""
    asset = AssetKey(world.backend.chain_id, payment.terms.token)
    bogus = Transfer(
        AccountKey(asset, AccountKind.ESCROW_HELD),
        AccountKey(asset, AccountKind.MERCHANT_SETTLED, payment.terms.merchant),
        5 * UNIT,
    )
    with database.transaction() as conn:
        entry = NewEntry.from_transfers(key, "captured", [bogus], payment.id)
        Ledger().record(conn, entry, NOW, state=EntryState.POSTED)


def _audit_and_replay_agree(database: Database, world: LocalDeployment) -> None:
    with database.snapshot() as conn:
        assert EventStore(database).verify(conn).ok
        assert Ledger().verify(conn).ok
    assert verify_replay(database, chain_id=world.backend.chain_id).differences == ()


@pytest.fixture
def payments(database: Database, world: LocalDeployment) -> list[Payment]:
    return [_held_payment(database, world), _held_payment(database, world, captured=40 * UNIT)]


def test_consistent_books_match_every_payment_and_the_escrow_balance(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    report = reconcile(database, _target(world), now=NOW)
    assert report.to_json() == {
        "matched": 3,  # two payments and one asset
        "mismatched": 0,
        "details": [],
        "conflicted": [],
        "repaired": [],
        "resolved": [],
    }
    assert [_conflicts(database, p.id) for p in payments] == [0, 0]


def test_a_posting_the_chain_never_made_conflicts_the_payment_once_and_repair_resyncs_it(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    payment = payments[0]
    _book_bogus_capture(database, world, payment)

    first = reconcile(database, _target(world), now=NOW)
    again = reconcile(database, _target(world), now=NOW + 1)

    details = first.to_json()["details"]
    assert {(d.get("payment"), d["field"], d["ledger"], d["chain"]) for d in details} == {
        (payment.id, "capturable", 95 * UNIT, 100 * UNIT),
        (payment.id, "refundable", 5 * UNIT, 0),
        (None, "escrow_balance", 155 * UNIT, 160 * UNIT),  # 100 held + 60 held, 40 paid out
    }
    assert (first.mismatched, first.matched, first.conflicted) == (2, 1, (payment.id,))
    assert again.conflicted == ()
    assert _conflicts(database, payment.id) == 1

    repaired = reconcile(database, _target(world), now=NOW + 2, repair=True)
    assert (repaired.mismatched, repaired.matched, repaired.repaired) == (0, 3, (payment.id,))
    assert _conflicts(database, payment.id) == 1
    with database.snapshot() as conn:
        assert Ledger().verify(conn).ok


def test_a_capture_behind_the_ledgers_back_is_found_and_repair_books_it(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    payment = payments[1]
    _capture_on_chain(world, payment, 30 * UNIT)

    report = reconcile(database, _target(world), now=NOW)
    by_field = {d["field"]: d for d in report.to_json()["details"]}
    assert by_field["capturable"] == {
        "payment": payment.id,
        "field": "capturable",
        "ledger": 60 * UNIT,
        "chain": 30 * UNIT,
    }
    assert by_field["refundable"]["ledger"] == 40 * UNIT
    assert by_field["refundable"]["chain"] == 70 * UNIT
    assert _conflicts(database, payment.id) == 1

    repaired = reconcile(database, _target(world), now=NOW + 1, repair=True)
    assert repaired.mismatched == 0
    assert _conflicts(database, payment.id) == 1
    # The books are right now, but the stream never recorded the 30: its status cannot vouch
    # for them, so the payment stays conflicted.
    assert repaired.resolved == ()
    assert _projected(database, payment.id).status is PaymentStatus.CONFLICTED
    with database.snapshot() as conn:
        kinds = [e.kind for e in Ledger().entries_of_payment(conn, payment.id)]
    # The mirror's two entries, reversed newest first, then the chain's three logs re-booked.
    assert (
        kinds == ["authorized", "captured"] + ["reversal"] * 2 + ["authorized"] + ["captured"] * 2
    )


def test_a_psp_view_that_disagrees_is_reported_against_the_projection(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    views = {payments[1].id: ProviderView(status="succeeded", captured=40 * UNIT)}
    report = reconcile(database, _target(world), now=NOW, provider=views)
    assert report.to_json()["details"] == [
        {
            "payment": payments[1].id,
            "field": "status",
            "ledger": "partially_captured",
            "psp": "succeeded",
        }
    ]
    assert report.mismatched == 1


def test_replay_still_matches_the_live_books_after_a_conflict_is_marked(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    _capture_on_chain(world, payments[1], 30 * UNIT)
    reconcile(database, _target(world), now=NOW)
    assert verify_replay(database, chain_id=world.backend.chain_id).differences == ()


def test_repair_that_makes_the_books_match_again_resolves_the_conflict_once(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    payment = payments[0]
    _book_bogus_capture(database, world, payment)
    reconcile(database, _target(world), now=NOW)
    assert _projected(database, payment.id).status is PaymentStatus.CONFLICTED

    repaired = reconcile(database, _target(world), now=NOW + 1, repair=True)

    assert repaired.to_json()["resolved"] == [payment.id]
    assert (repaired.mismatched, repaired.repaired) == (0, (payment.id,))
    assert _kinds(database, payment.id)[-2:] == [Conflicted.kind, ConflictResolved.kind]
    assert _projected(database, payment.id) == payment  # requires_capture, amounts untouched
    events = len(_kinds(database, payment.id))
    for rerun in (
        reconcile(database, _target(world), now=NOW + 2),
        reconcile(database, _target(world), now=NOW + 3, repair=True),
    ):
        assert (rerun.mismatched, rerun.conflicted, rerun.repaired, rerun.resolved) == (
            0,
            (),
            (),
            (),
        )
    assert len(_kinds(database, payment.id)) == events
    _audit_and_replay_agree(database, world)


def test_a_payment_still_mismatching_stays_conflicted(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    payment = payments[0]
    _book_bogus_capture(database, world, payment)

    runs = [reconcile(database, _target(world), now=NOW + second) for second in range(3)]

    assert [run.resolved for run in runs] == [(), (), ()]
    assert [run.conflicted for run in runs] == [(payment.id,), (), ()]
    assert _kinds(database, payment.id)[2:] == [Conflicted.kind]
    assert _projected(database, payment.id).status is PaymentStatus.CONFLICTED


def test_repaired_books_with_the_psp_still_disagreeing_keep_the_payment_conflicted(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    payment = payments[0]
    _book_bogus_capture(database, world, payment)
    views = {payment.id: ProviderView(status="canceled")}

    repaired = reconcile(database, _target(world), now=NOW, provider=views, repair=True)

    assert (repaired.conflicted, repaired.repaired, repaired.resolved) == (
        (payment.id,),
        (payment.id,),
        (),
    )
    assert repaired.to_json()["details"] == [
        {"payment": payment.id, "field": "status", "ledger": "requires_capture", "psp": "canceled"}
    ]
    assert _projected(database, payment.id).status is PaymentStatus.CONFLICTED

    agreeing = {payment.id: ProviderView(status="requires_capture")}
    resolved = reconcile(database, _target(world), now=NOW + 1, provider=agreeing)
    assert resolved.resolved == (payment.id,)
    assert _kinds(database, payment.id).count(Conflicted.kind) == 1
    _audit_and_replay_agree(database, world)


def _confirm_like_the_mirror(
    database: Database, payment: Payment, event: Event, key: str
) -> Payment:
    """The mirror's confirmation of a log whose entry it recorded pending: the event appended
    and projected, the entry posted, in one transaction."""
    with database.transaction() as conn:
        current = load(conn, payment.id, lock=True)
        assert current is not None
        EventStore(database).append(conn, payment.id, current.version, [stored_form(event)])
        project(conn, current, [event], current.version + 1)
        Ledger().post(conn, key, NOW)
    return apply(payment, event)


def test_a_plain_run_resolves_a_conflict_once_the_mirror_caught_up(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    payment = payments[1]  # 40 of 100 captured
    _capture_on_chain(world, payment, 30 * UNIT)
    reconcile(database, _target(world), now=NOW)  # the chain is ahead of the ledger
    assert _projected(database, payment.id).status is PaymentStatus.CONFLICTED

    # The indexer hands the capture's log out, still unconfirmed: booked pending.
    capture = Captured(
        payment_id=payment.id, at=NOW, amount=30 * UNIT, fee=fee_for(30 * UNIT, FEE_BPS)
    )
    entry = entry_for(capture, payment, chain_id=world.backend.chain_id, key="log:capture")
    assert entry is not None
    with database.transaction() as conn:
        Ledger().record(conn, entry, NOW)
    caught_up = reconcile(database, _target(world), now=NOW + 1)

    assert (caught_up.mismatched, caught_up.resolved) == (0, (payment.id,))
    assert _projected(database, payment.id) == payment  # partially_captured, 40 captured

    # Confirmed later: the payment, no longer conflicted, takes the capture like any other.
    payment = _confirm_like_the_mirror(database, payment, capture, "log:capture")
    assert (payment.status, payment.captured) == (PaymentStatus.PARTIALLY_CAPTURED, 70 * UNIT)
    assert _projected(database, payment.id) == payment
    after = reconcile(database, _target(world), now=NOW + 2)
    assert (after.mismatched, after.conflicted, after.resolved) == (0, (), ())
    _audit_and_replay_agree(database, world)


def test_the_same_discrepancy_after_a_resolution_conflicts_the_payment_again(
    database: Database, world: LocalDeployment, payments: list[Payment]
) -> None:
    payment = payments[0]
    _book_bogus_capture(database, world, payment, "bogus-1")
    first = reconcile(database, _target(world), now=NOW, repair=True)
    assert (first.conflicted, first.resolved) == ((payment.id,), (payment.id,))

    _book_bogus_capture(database, world, payment, "bogus-2")
    again = reconcile(database, _target(world), now=NOW + 1)

    assert again.conflicted == (payment.id,)
    assert _kinds(database, payment.id)[2:] == [
        Conflicted.kind,
        ConflictResolved.kind,
        Conflicted.kind,
    ]


@pytest.mark.anvil
def test_cmd_reconcile_batches_its_reads_over_json_rpc_and_repairs_from_anvil_logs(
    database: Database,
    db_url: str,
    anvil_process: AnvilProcess,
    capsys: pytest.CaptureFixture[str],
) -> None:
    backend = AnvilBackend(anvil_process)
    snapshot = backend.snapshot()
    try:
        world = deploy_local(backend)
        bind(database, backend.w3, world.escrow.address, now=NOW)
        payment = _held_payment(database, world, captured=40 * UNIT)
        assert cmd_reconcile(db_url, as_json=True, repair=False, rpc_url=anvil_process.url) == 0
        assert json.loads(capsys.readouterr().out)["matched"] == 2

        _capture_on_chain(world, payment, 10 * UNIT)
        assert cmd_reconcile(db_url, as_json=True, repair=True, rpc_url=anvil_process.url) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["mismatched"], report["repaired"], report["resolved"]) == (
            0,
            [payment.id],
            [],  # the stream lacks the 10 captured behind its back
        )
        assert _conflicts(database, payment.id) == 1
    finally:
        backend.revert(snapshot)


def test_cmd_reconcile_without_an_rpc_url_says_how_to_give_one(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SETTLE_RPC_URL", raising=False)
    with pytest.raises(RpcUrlMissing, match="--rpc-url"):
        cmd_reconcile(db_url, as_json=True, repair=False)


def test_payments_compared_a_page_at_a_time_report_as_when_read_whole(
    database: Database,
    world: LocalDeployment,
    payments: list[Payment],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _book_bogus_capture(database, world, payments[1])
    whole = reconcile(database, _target(world), now=NOW)

    monkeypatch.setattr(reconcile_module, "PAYMENTS_PER_PAGE_MAX", 1)
    paged = reconcile(database, _target(world), now=NOW + 1)

    assert (paged.matched, paged.mismatched, paged.details) == (
        whole.matched,
        whole.mismatched,
        whole.details,
    )
    assert (whole.matched, whole.mismatched) == (1, 2)  # payments[1] and its asset


def test_repair_books_an_operator_funded_dispute_won_by_the_merchant_back_to_its_funder(
    database: Database,
    world: LocalDeployment,
    payments: list[Payment],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The arbiter funds a dispute from its own money and the merchant wins it: the escrow pays
    the freeze back to the arbiter. The ledger never saw either log (they leave the payment's
    views as they were), and a bogus posting makes the payment mismatch: repair reads its logs
    back in block ranges (two blocks a request here) and books them as the chain moved the
    money."""
    payment = _held_payment(database, world, captured=100 * UNIT)  # disputable: hold closed
    terms = terms_tuple(payment.terms)
    funder = world.arbiter
    asset = AssetKey(world.backend.chain_id, payment.terms.token)
    merchant = AccountKey(asset, AccountKind.MERCHANT_SETTLED, payment.terms.merchant)
    with database.snapshot() as conn:
        merchant_before = Ledger().balance(conn, merchant).posted
    seq = world.state(payment.terms)[2]
    funder.send(world.escrow.functions.openDispute(terms, seq, 10 * UNIT, False))
    funder.send(world.escrow.functions.resolveDispute(terms, seq + 1, False))
    _book_bogus_capture(database, world, payment)
    monkeypatch.setattr(reconcile_module, "LOG_BLOCKS_PER_REQUEST_MAX", 2)

    repaired = reconcile(database, _target(world), now=NOW, repair=True)

    assert (repaired.mismatched, repaired.repaired) == (0, (payment.id,))
    with database.snapshot() as conn:
        ledger = Ledger()
        funded = ledger.balance(conn, AccountKey(asset, AccountKind.REFUNDS, funder.address))
        merchant_after = ledger.balance(conn, merchant).posted
        kinds = [entry.kind for entry in ledger.entries_of_payment(conn, payment.id)]
    assert (funded.debits_posted, funded.credits_posted) == (10 * UNIT, 10 * UNIT)  # paid back
    assert merchant_after == merchant_before  # the bogus 5 reversed, the dispute not its
    assert kinds[-2:] == ["dispute_opened", "dispute_resolved"]
