"""Which transfers each payment event books: the domain's facts in ledger terms.

It lives in ``engine.store`` because the domain must not know the ledger exists (DESIGN §2:
store imports domain, never the reverse). It is the one booking of payment events: the chain
mirror, replay and reconciliation's repair all call it, with the payment's projection *before*
the event, which holds the addresses of the terms and the amount an open dispute froze. Every
account it books comes from the event's own fields or the terms, so the same stored event
books the same money whoever reads it:

    Authorized          payer            → escrow_held       amount
    Captured            escrow_held      → merchant_settled  amount - fee - legs
                        escrow_held      → fees              fee
                        escrow_held      → leg (each)        leg amount
    Voided, Reclaimed   escrow_held      → payer             amount
    Refunded            funder           → payer             amount
    DisputeOpened       funder           → disputes          amount
    DisputeResolved     disputes         → paid_to           frozen amount

The funder is whoever the escrow pulled a refund or dispute from (the event names it, as the
chain's log did): the merchant, whose merchant_settled account pays, or anyone else (the
operator), whose refunds account does. A resolution pays whoever the chain paid (``paid_to``):
the payer when the payer won, else the dispute's funder, into the account it funded from.
Events stored before they named these accounts (None) were all funded by the merchant.
PaymentRequested, Failed, Conflicted and ConflictResolved move no money.

Payouts the escrow could not push (``Credited``) stay in the escrow as credits their owner
withdraws later; ``credited`` and ``withdrawn`` book those, so that escrow_held, disputes and
escrow_credits together always mirror the escrow's token balance. ``credit_entry`` books the
credit events (``engine.domain.credits``) with them, for the mirror and for replay alike:

    Credited            deferred_payouts → escrow_credits   amount   (of the account)
    Withdrawn           escrow_credits   → deferred_payouts amount
"""

from __future__ import annotations

from engine.domain.credits import Credited, CreditEvent, CreditReversed, Withdrawn
from engine.domain.events import (
    Authorized,
    Captured,
    DisputeOpened,
    DisputeResolved,
    Event,
    Party,
    Reclaimed,
    Refunded,
    Voided,
)
from engine.domain.payment import Payment
from engine.store.ledger_accounts import AccountKey, AccountKind, AssetKey, InvalidLedgerInput
from engine.store.ledger_entries import NewEntry, Transfer

_K = AccountKind


def asset_of(payment: Payment, chain_id: int) -> AssetKey:
    return AssetKey(chain_id, payment.terms.token)


def transfers_for(event: Event, payment: Payment, *, chain_id: int) -> tuple[Transfer, ...]:
    """The transfers ``event`` books; ``payment`` is the projection it applies to."""
    if event.payment_id != payment.id:
        raise InvalidLedgerInput(f"event of {event.payment_id} booked against {payment.id}")
    asset = asset_of(payment, chain_id)
    terms = payment.terms
    held = AccountKey(asset, _K.ESCROW_HELD)
    payer = AccountKey(asset, _K.PAYER, terms.payer)
    disputes = AccountKey(asset, _K.DISPUTES)
    match event:
        case Authorized(amount=amount):
            return (Transfer(payer, held, amount),)
        case Captured(amount=amount, fee=fee, legs=legs):
            shares = [
                (AccountKey(asset, _K.MERCHANT_SETTLED, terms.merchant), event.merchant_net),
                (AccountKey(asset, _K.FEES, terms.fee_receiver), fee),
                *((AccountKey(asset, _K.LEG, leg.recipient), leg.amount) for leg in legs),
            ]
            paid = tuple(Transfer(held, account, share) for account, share in shares if share > 0)
            if sum(transfer.amount for transfer in paid) != amount:
                raise AssertionError(f"capture shares do not add up to {amount}: {paid}")
            return paid
        case Voided(amount=amount) | Reclaimed(amount=amount):
            return (Transfer(held, payer, amount),)
        case Refunded(amount=amount, funder=funder):
            return (Transfer(_funder_account(payment, asset, funder), payer, amount),)
        case DisputeOpened(amount=amount, funder=funder):
            return (Transfer(_funder_account(payment, asset, funder), disputes, amount),)
        case DisputeResolved(winner=Party.PAYER, paid_to=paid_to):
            if paid_to not in (None, terms.payer):
                raise InvalidLedgerInput(f"the payer won {payment.id}, yet {paid_to} was paid")
            return (Transfer(disputes, payer, _frozen(payment)),)
        case DisputeResolved(winner=Party.MERCHANT, paid_to=paid_to):
            funded = _funder_account(payment, asset, paid_to)
            return (Transfer(disputes, funded, _frozen(payment)),)
    return ()


def entry_for(event: Event, payment: Payment, *, chain_id: int, key: str) -> NewEntry | None:
    """The entry that books ``event`` under ``key``, or None when it moves no money."""
    transfers = transfers_for(event, payment, chain_id=chain_id)
    if not transfers:
        return None
    return NewEntry.from_transfers(key, event.kind, transfers, payment.id)


def credited(asset: AssetKey, account: str, amount: int) -> Transfer:
    """A payout to ``account`` that the escrow kept as a withdrawable credit."""
    return Transfer(
        AccountKey(asset, _K.DEFERRED_PAYOUTS, account),
        AccountKey(asset, _K.ESCROW_CREDITS, account),
        amount,
    )


def withdrawn(asset: AssetKey, account: str, amount: int) -> Transfer:
    """``account`` took its credits out of the escrow."""
    return Transfer(
        AccountKey(asset, _K.ESCROW_CREDITS, account),
        AccountKey(asset, _K.DEFERRED_PAYOUTS, account),
        amount,
    )


def credit_entry(event: CreditEvent, *, key: str) -> NewEntry:
    """The entry that books a credit event under ``key``; it belongs to no payment."""
    asset = AssetKey(event.chain_id, event.token)
    match event:
        case Credited():
            transfer = credited(asset, event.account, event.amount)
        case Withdrawn():
            transfer = withdrawn(asset, event.account, event.amount)
        # Undoing a credit moves it back as a withdrawal would, and undoing a withdrawal as a
        # credit would: the same two accounts, the other way.
        case CreditReversed(of=Credited.kind):
            transfer = withdrawn(asset, event.account, event.amount)
        case CreditReversed(of=Withdrawn.kind):
            transfer = credited(asset, event.account, event.amount)
        case _:
            raise AssertionError(f"no booking for credit event {event.kind}")
    return NewEntry.from_transfers(key, event.kind, [transfer])


def _funder_account(payment: Payment, asset: AssetKey, funder: str | None) -> AccountKey:
    """The account ``funder`` pays refunds and disputes from (and gets a won dispute back
    into); None is the merchant, as events recorded before they named their funder were."""
    account = AccountKey(asset, _K.REFUNDS, funder or payment.terms.merchant)
    if account.owner == payment.terms.merchant:
        return AccountKey(asset, _K.MERCHANT_SETTLED, account.owner)
    return account


def _frozen(payment: Payment) -> int:
    if payment.disputed <= 0:
        raise InvalidLedgerInput(f"payment {payment.id} has no open dispute to resolve")
    return payment.disputed
