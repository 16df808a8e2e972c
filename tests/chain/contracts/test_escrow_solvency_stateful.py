"""Random operation sequences against the escrow, checked after every step against a model.

The machine holds, charges, captures (random fee and legs), voids, refunds, reclaims after
time travel, opens and resolves disputes, settles atomic and non-atomic batches (with a
replayed operation mixed in), blocks recipients of a blocklist token so payouts turn into
credits, and withdraws them. After every step:

* solvency: token.balanceOf(escrow) == Σ capturable + Σ frozen by disputes + Σ credits;
* each payment's (capturable, refundable, seq) and open dispute on chain equal the model's;
* every credit and every tracked party's balance equals the model's.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import ClassVar, Final

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)
from web3.contract import Contract
from web3.contract.contract import ContractFunction

from engine.chain.contracts.escrow import (
    BatchOp,
    Leg,
    Method,
    Signer,
    legs_tuple,
    terms_tuple,
)
from engine.chain.contracts.reverts import decode_revert
from engine.domain.ids import PaymentTerms
from engine.tools.localnet import UNIT, LocalDeployment
from tests.chain.contracts.batch_support import deploy_funded_token, fee, payouts, settle
from tests.fixtures.solvency import emitted, reverts_with

# Each example costs ~4 s of CPU (the embedded EVM estimates gas by binary search, a dozen
# executions per transaction; anvil pays for JSON-RPC round trips), so the default run stays
# short and `--soak` runs many more.
EXAMPLES_MAX: Final = {"embedded": 10, "anvil": 20}
SOAK_EXAMPLES_MAX: Final = 200
STEPS_MAX: Final = 20
PAYMENTS_MAX: Final = 4  # bounds the chain reads every invariant check makes
BATCH_OPS_MAX: Final = 4
LEGS_MAX: Final = 2
AMOUNT_MAX: Final = 50 * UNIT
HOUR_S: Final = 3_600
DAY_S: Final = 24 * HOUR_S
# The next block's timestamp is at least the latest one and, on both EVMs, less than this
# much later: an operation is only tried when it is valid at every moment of that window.
TIME_MARGIN_S: Final = 600
AUTHORIZATION_WINDOWS_S: Final = (2 * HOUR_S, 2 * DAY_S, 30 * DAY_S)
REFUND_WINDOWS_S: Final = (DAY_S, 60 * DAY_S)  # counted from the authorization expiry
TIME_STEPS_S: Final = (HOUR_S, DAY_S, 10 * DAY_S)
FEE_BOUNDS_BPS: Final = ((0, 0), (0, 100), (25, 100), (0, 10_000))
STALE_SEQ: Final = 0xFFFF  # a sequence no payment reaches here: the operation is a replay
NEW: Final = ("authorize", "charge")
EXISTING: Final = ("capture", "void", "refund")


@dataclass
class Hold:
    """The model of one payment."""

    terms: PaymentTerms
    id: bytes
    capturable: int
    refundable: int
    seq: int
    frozen: int = 0  # the open dispute's amount


@dataclass
class Books:
    """Everything the model expects the chain to show."""

    holds: dict[bytes, Hold]
    balances: dict[str, int]  # of the tracked parties
    credits: dict[str, int]  # of the parties that can be blocked
    blocked: set[str] = field(default_factory=set)

    def copy(self) -> Books:
        return Books(
            {key: replace(hold) for key, hold in self.holds.items()},
            dict(self.balances),
            dict(self.credits),
            set(self.blocked),
        )

    def pay(self, to: str, amount: int) -> None:
        """A payout: pushed, or credited when the recipient is blocked. Funders of refunds and
        disputes (operator, arbiter) are not tracked."""
        if amount == 0:
            return
        if to in self.blocked:
            self.credits[to] += amount
        elif to in self.balances:
            self.balances[to] += amount


@dataclass(frozen=True)
class Planned:
    """One operation, as a batch record and as the equivalent direct call."""

    op: BatchOp
    call: ContractFunction


def resync_signers(world: LocalDeployment) -> None:
    """Re-reads every signer's nonce, after the chain was reverted under it."""
    for value in vars(world).values():
        if isinstance(value, Signer):
            value.resync()


@dataclass
class Arena:
    """The deployment, its blocklist token, and the snapshot every example starts from."""

    world: LocalDeployment
    token: Contract
    snapshot: str


class EscrowModel(RuleBasedStateMachine):
    arena: ClassVar[Arena]

    def __init__(self) -> None:
        super().__init__()
        arena = self.arena
        self.world, self.token = arena.world, arena.token
        backend = self.world.backend
        backend.revert(arena.snapshot)
        arena.snapshot = backend.snapshot()
        resync_signers(self.world)
        self.now = backend.now()
        w = self.world
        self.payer, self.merchant = w.payer.address, w.merchant.address
        self.fee_receiver, self.other = w.fee_receiver.address, w.other.address
        self.sink = w.pauser.address  # never blocked: where blocked accounts withdraw to
        self.blockable = (self.payer, self.merchant, self.fee_receiver, self.other)
        tracked = (*self.blockable, self.sink)
        self.signers: dict[str, Signer] = {
            s.address: s for s in vars(w).values() if isinstance(s, Signer)
        }
        self.books = Books(
            holds={},
            balances={a: w.balance(a, self.token) for a in tracked},
            credits=dict.fromkeys(self.blockable, 0),
        )

    # ───────────────────────────── planning ─────────────────────────────

    def _candidates(self, books: Books, kind: str) -> list[Hold]:
        def valid(hold: Hold) -> bool:
            terms = hold.terms
            if kind == "capture":
                live = self.now + TIME_MARGIN_S < terms.authorization_expiry
                return hold.capturable > 0 and live
            if kind == "void":
                return hold.capturable > 0
            if kind == "refund":
                return hold.refundable > 0 and self.now + TIME_MARGIN_S < terms.refund_expiry
            if kind == "reclaim":
                return hold.capturable > 0 and self.now >= terms.authorization_expiry
            if kind == "open_dispute":
                return hold.refundable > 0 and hold.frozen == 0
            return hold.frozen > 0  # resolve_dispute

        return [hold for hold in books.holds.values() if valid(hold)]

    def _feasible(self, books: Books) -> list[str]:
        can_hold = len(books.holds) < PAYMENTS_MAX and self.payer not in books.blocked
        return [*(NEW if can_hold else ()), *(k for k in EXISTING if self._candidates(books, k))]

    def _plan(self, data: st.DataObject, books: Books, kind: str) -> Planned:
        """Draws a valid `kind` operation and applies its effects to `books`."""
        if kind in NEW:
            return self._plan_new(data, books, charge=kind == "charge")
        hold = data.draw(st.sampled_from(self._candidates(books, kind)), label=kind)
        if kind == "capture":
            return self._plan_capture(data, books, hold)
        terms, seq = hold.terms, hold.seq
        escrow = self.world.escrow.functions
        hold.seq += 1
        if kind == "void":
            amount = data.draw(st.integers(1, hold.capturable), label="void amount")
            hold.capturable -= amount
            books.pay(self.payer, amount)
            return Planned(
                BatchOp.void(terms, seq, amount), escrow.void(terms_tuple(terms), seq, amount)
            )
        amount = data.draw(st.integers(1, hold.refundable), label="refund amount")
        hold.refundable -= amount
        books.pay(self.payer, amount)  # funded by the operator
        return Planned(
            BatchOp.refund(terms, seq, amount),
            escrow.refund(terms_tuple(terms), seq, amount, False),
        )

    def _plan_new(self, data: st.DataObject, books: Books, *, charge: bool) -> Planned:
        max_amount = data.draw(st.integers(1, AMOUNT_MAX), label="max amount")
        amount = data.draw(st.integers(1, max_amount), label="hold amount")
        window = data.draw(st.sampled_from(AUTHORIZATION_WINDOWS_S), label="window")
        refund_window = data.draw(st.sampled_from(REFUND_WINDOWS_S), label="refund window")
        min_fee_bps, max_fee_bps = data.draw(st.sampled_from(FEE_BOUNDS_BPS), label="fees")
        terms = self.world.terms(
            max_amount,
            token=self.token.address,
            authorization_expiry=self.now + window,
            refund_expiry=self.now + window + refund_window,
            min_fee_bps=min_fee_bps,
            max_fee_bps=max_fee_bps,
        )
        hold = Hold(terms, self.world.payment_hash(terms), amount, 0, 1)
        books.holds[hold.id] = hold
        books.balances[self.payer] -= amount
        signature = self.world.payer_signature(terms)
        escrow = self.world.escrow.functions
        if not charge:
            return Planned(
                BatchOp.authorize(terms, amount, Method.ALLOWANCE, signature),
                escrow.authorize(terms_tuple(terms), amount, Method.ALLOWANCE, signature),
            )
        fee_bps, legs = self._capture_split(data, books, hold, amount)
        return Planned(
            BatchOp.charge(terms, amount, Method.ALLOWANCE, signature, fee_bps, legs),
            escrow.charge(
                terms_tuple(terms),
                amount,
                Method.ALLOWANCE,
                signature,
                fee_bps,
                legs_tuple(legs),
            ),
        )

    def _plan_capture(self, data: st.DataObject, books: Books, hold: Hold) -> Planned:
        terms, seq = hold.terms, hold.seq
        amount = data.draw(st.integers(1, hold.capturable), label="capture amount")
        fee_bps, legs = self._capture_split(data, books, hold, amount)
        return Planned(
            BatchOp.capture(terms, seq, amount, fee_bps, legs),
            self.world.escrow.functions.capture(
                terms_tuple(terms), seq, amount, fee_bps, legs_tuple(legs)
            ),
        )

    def _capture_split(
        self, data: st.DataObject, books: Books, hold: Hold, amount: int
    ) -> tuple[int, list[Leg]]:
        """Draws a fee rate and extra legs within the payer-signed budget, and books the
        capture of `amount` with them."""
        terms = hold.terms
        fee_bps = data.draw(st.integers(terms.min_fee_bps, terms.max_fee_bps), label="fee bps")
        fee_units = fee(amount, fee_bps)
        left = fee(amount, terms.max_fee_bps) - fee_units
        legs: list[Leg] = []
        for _ in range(data.draw(st.integers(0, min(LEGS_MAX, left)), label="legs")):
            if left == 0:
                break
            recipient = data.draw(st.sampled_from((self.other, self.sink)), label="leg to")
            legs.append(Leg(recipient, data.draw(st.integers(1, left), label="leg amount")))
            left -= legs[-1].amount
        hold.capturable -= amount
        hold.refundable += amount
        hold.seq += 1
        books.pay(self.merchant, amount - fee_units - sum(leg.amount for leg in legs))
        books.pay(self.fee_receiver, fee_units)
        for leg in legs:
            books.pay(leg.recipient, leg.amount)
        return fee_bps, legs

    # ─────────────────────────────── rules ───────────────────────────────

    def _direct(self, data: st.DataObject, kind: str) -> None:
        books = self.books.copy()
        planned = self._plan(data, books, kind)
        self.world.operator.send(planned.call)
        self.books = books

    @precondition(lambda self: "authorize" in self._feasible(self.books))
    @rule(data=st.data(), kind=st.sampled_from(NEW))
    def hold_or_charge(self, data: st.DataObject, kind: str) -> None:
        self._direct(data, kind)

    @precondition(lambda self: bool(self._candidates(self.books, "capture")))
    @rule(data=st.data())
    def capture(self, data: st.DataObject) -> None:
        self._direct(data, "capture")

    @precondition(lambda self: bool(self._candidates(self.books, "void")))
    @rule(data=st.data())
    def void(self, data: st.DataObject) -> None:
        self._direct(data, "void")

    @precondition(lambda self: bool(self._candidates(self.books, "refund")))
    @rule(data=st.data())
    def refund(self, data: st.DataObject) -> None:
        self._direct(data, "refund")

    @precondition(lambda self: bool(self._candidates(self.books, "reclaim")))
    @rule(data=st.data())
    def reclaim(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(self._candidates(self.books, "reclaim")))
        self.world.payer.send(self.world.escrow.functions.reclaim(terms_tuple(hold.terms)))
        self.books.pay(self.payer, hold.capturable)
        hold.capturable = 0
        hold.seq += 1

    @precondition(lambda self: bool(self._candidates(self.books, "open_dispute")))
    @rule(data=st.data())
    def open_dispute(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(self._candidates(self.books, "open_dispute")))
        amount = data.draw(st.integers(1, hold.refundable), label="dispute amount")
        call = self.world.escrow.functions.openDispute(
            terms_tuple(hold.terms), hold.seq, amount, False
        )
        self.world.arbiter.send(call)  # the arbiter funds the freeze
        hold.refundable -= amount
        hold.frozen = amount
        hold.seq += 1

    @precondition(lambda self: bool(self._candidates(self.books, "resolve_dispute")))
    @rule(data=st.data(), payer_wins=st.booleans())
    def resolve_dispute(self, data: st.DataObject, payer_wins: bool) -> None:
        hold = data.draw(st.sampled_from(self._candidates(self.books, "resolve_dispute")))
        call = self.world.escrow.functions.resolveDispute(
            terms_tuple(hold.terms), hold.seq, payer_wins
        )
        self.world.arbiter.send(call)
        if payer_wins:
            self.books.pay(self.payer, hold.frozen)
        else:  # back to the arbiter, who funded it, and refundable again
            hold.refundable += hold.frozen
        hold.frozen = 0
        hold.seq += 1

    @precondition(lambda self: bool(self._feasible(self.books)))
    @rule(
        data=st.data(),
        atomic=st.booleans(),
        size=st.integers(1, BATCH_OPS_MAX),
        replay_at=st.none() | st.integers(0, BATCH_OPS_MAX),
    )
    def batch(self, data: st.DataObject, atomic: bool, size: int, replay_at: int | None) -> None:
        books = self.books.copy()
        ops: list[BatchOp] = []
        while len(ops) < size and (kinds := self._feasible(books)):
            ops.append(self._plan(data, books, data.draw(st.sampled_from(kinds))).op)
        replayed: int | None = None
        if replay_at is not None and self.books.holds:
            target = data.draw(st.sampled_from(list(self.books.holds.values())))
            replayed = min(replay_at, len(ops))
            ops.insert(replayed, BatchOp.void(target.terms, STALE_SEQ, 1))
        if atomic and replayed is not None:
            with reverts_with(self.world, "StaleSequence", given=STALE_SEQ):
                settle(self.world, ops, atomic=True)
            return  # nothing applied: the books stay as they were
        receipt = settle(self.world, ops, atomic=atomic)
        failed = [
            (f["index"], decode_revert(f["reason"]).error)
            for f in emitted(self.world, receipt, "OperationFailed")
        ]
        assert failed == ([] if replayed is None else [(replayed, "StaleSequence")])
        recipients = [to for to, _ in payouts(self.world, receipt, self.token)]
        assert len(recipients) == len(set(recipients)), "payouts were not netted"
        self.books = books

    @rule(seconds=st.sampled_from(TIME_STEPS_S))
    def time_passes(self, seconds: int) -> None:
        self.now = self.world.backend.increase_time(seconds)

    @precondition(lambda self: bool(self._candidates(self.books, "capture")))
    @rule(data=st.data())
    def authorization_expires(self, data: st.DataObject) -> None:
        """Travels to the expiry of a hold with funds left, so reclaims get their turn."""
        hold = data.draw(st.sampled_from(self._candidates(self.books, "capture")))
        self.now = self.world.backend.increase_time(hold.terms.authorization_expiry - self.now)

    @rule(index=st.integers(0, 3))
    def toggle_blocked(self, index: int) -> None:
        account = self.blockable[index]
        blocked = account not in self.books.blocked
        self.world.admin.send(self.token.functions.setBlocked(account, blocked))
        self.books.blocked ^= {account}

    @precondition(lambda self: any(self.books.credits.values()))
    @rule(data=st.data())
    def withdraw(self, data: st.DataObject) -> None:
        books = self.books
        owed = [account for account, amount in books.credits.items() if amount]
        account = data.draw(st.sampled_from(owed), label="withdrawer")
        open_to = [a for a in books.balances if a not in books.blocked]
        to = data.draw(st.sampled_from(open_to), label="withdraw to")
        self.signers[account].send(self.world.escrow.functions.withdraw(self.token.address, to))
        books.balances[to] += books.credits[account]
        books.credits[account] = 0

    # ───────────────────────────── invariant ─────────────────────────────

    @invariant()
    def escrow_is_solvent_and_matches_the_model(self) -> None:
        escrow, token = self.world.escrow.functions, self.token.functions
        owed = 0
        for hold in self.books.holds.values():
            capturable, refundable, seq = escrow.payments(hold.id).call()
            assert (capturable, refundable, seq) == (hold.capturable, hold.refundable, hold.seq)
            frozen, _ = escrow.disputes(hold.id).call()
            assert frozen == hold.frozen
            owed += capturable + frozen
        credits = {a: escrow.credits(self.token.address, a).call() for a in self.blockable}
        assert credits == self.books.credits
        balance = token.balanceOf(self.world.escrow.address).call()
        assert balance == owed + sum(credits.values())
        assert {a: token.balanceOf(a).call() for a in self.books.balances} == self.books.balances


@pytest.mark.parametrize(
    "soak", [pytest.param(False, id="quick"), pytest.param(True, id="soak", marks=pytest.mark.slow)]
)
def test_escrow_stays_solvent_and_matches_the_model_under_random_operations(
    world: LocalDeployment, soak: bool
) -> None:
    token = deploy_funded_token(world, "BlocklistToken")
    arena = Arena(world, token, world.backend.snapshot())

    class Machine(EscrowModel):
        pass

    Machine.arena = arena
    run_state_machine_as_test(
        Machine,
        settings=settings(
            max_examples=SOAK_EXAMPLES_MAX if soak else EXAMPLES_MAX[world.backend.name],
            stateful_step_count=STEPS_MAX,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        ),
    )
