"""Random operation sequences against the escrow, checked after every step against a model.

The machine holds, charges, captures (random fee and legs), voids, refunds (funded by the
operator or by the merchant), reclaims after time travel, opens disputes (funded by the arbiter or
by the merchant) and resolves them with any sequence the arbiter may give, settles atomic and
non-atomic batches (with a replayed operation mixed in), blocks recipients of a blocklist token
so payouts turn into credits, and withdraws them. It also pulls the levers: pauses (new holds and
merchant-funded refunds then revert with EnforcedPause), revokes and grants the operator's role
(every operator operation then reverts), sets the merchant's funding caps (a pull beyond a cap or
beyond the merchant's net of a payment reverts by name), and, on anvil, moves a payment to just
below the sequence cap (a dispute opened there still resolves; operator operations at the cap
revert with SequenceExhausted). After every step:

* solvency: token.balanceOf(escrow) == Σ capturable + Σ frozen by disputes + Σ credits;
* each payment's (capturable, refundable, seq), open dispute and merchant funding on chain equal
  the model's; fees plus legs never exceed ceil(captured·maxFeeBps/10⁴) of any payment;
* every credit, funding allowance and tracked party's balance equals the model's.
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
from engine.tools.localnet import UINT256_MAX, UNIT, LocalDeployment
from tests.chain.contracts.batch_support import deploy_funded_token, fee, payouts, settle
from tests.chain.contracts.test_escrow_sequence_cap import SEQ_MAX, payment_slot
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
BPS: Final = 10_000
FUNDING_CAPS: Final = (0, 5 * UNIT, UINT256_MAX)  # none, a small cap, uncounted


@dataclass
class Hold:
    """The model of one payment."""

    terms: PaymentTerms
    id: bytes
    capturable: int
    refundable: int
    seq: int
    frozen: int = 0  # the open dispute's amount
    dispute_seq: int = 0  # the sequence the open dispute was opened at
    dispute_merchant_funded: bool = False
    merchant_funded: int = 0  # of refunds and open or lost disputes
    carry: int = 0  # fee budget used beyond the exact share, in 10⁻⁴ units
    captured: int = 0
    taken: int = 0  # fees plus legs

    def merchant_fundable(self) -> int:
        """What the merchant may still fund: its net share, at the largest fee, of what it
        holds of the payment (refundable plus what it funded), less what it funded."""
        share = (self.refundable + self.merchant_funded) * (BPS - self.terms.max_fee_bps) // BPS
        return share - self.merchant_funded


@dataclass
class Books:
    """Everything the model expects the chain to show."""

    holds: dict[bytes, Hold]
    balances: dict[str, int]  # of the tracked parties
    credits: dict[str, int]  # of the parties that can be blocked
    allowances: dict[str, int]  # the merchant's funding caps, by spender
    blocked: set[str] = field(default_factory=set)
    paused: bool = False
    operator_revoked: bool = False

    def copy(self) -> Books:
        return Books(
            {key: replace(hold) for key, hold in self.holds.items()},
            dict(self.balances),
            dict(self.credits),
            dict(self.allowances),
            set(self.blocked),
            self.paused,
            self.operator_revoked,
        )

    def fund_by_merchant(self, hold: Hold, spender: str, merchant: str, amount: int) -> None:
        """A pull of the merchant's funds: counted against its cap and the payment's bound."""
        if self.allowances[spender] != UINT256_MAX:
            self.allowances[spender] -= amount
        hold.merchant_funded += amount
        self.balances[merchant] -= amount

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
        self.operator, self.arbiter = w.operator.address, w.arbiter.address
        self.books = Books(
            holds={},
            balances={a: w.balance(a, self.token) for a in tracked},
            credits=dict.fromkeys(self.blockable, 0),
            allowances=dict.fromkeys((self.operator, self.arbiter), UINT256_MAX),
        )

    # ───────────────────────────── planning ─────────────────────────────

    def _candidates(self, books: Books, kind: str) -> list[Hold]:
        def valid(hold: Hold) -> bool:
            terms = hold.terms
            if kind in (*EXISTING, "open_dispute") and hold.seq == SEQ_MAX:
                return False  # SequenceExhausted: tried on its own by `at_the_cap`
            if kind in EXISTING and books.operator_revoked:
                return False
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
        can_hold = (
            len(books.holds) < PAYMENTS_MAX
            and self.payer not in books.blocked
            and not books.paused
            and not books.operator_revoked
        )
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
        fundable = self._merchant_fundable(books, hold, self.operator)
        merchant_funds = fundable > 0 and data.draw(st.booleans(), label="merchant funds")
        top = min(hold.refundable, fundable) if merchant_funds else hold.refundable
        amount = data.draw(st.integers(1, top), label="refund amount")
        if merchant_funds:
            books.fund_by_merchant(hold, self.operator, self.merchant, amount)
        hold.refundable -= amount
        books.pay(self.payer, amount)  # the operator's funding is not tracked
        return Planned(
            BatchOp.refund(terms, seq, amount, merchant_funds=merchant_funds),
            escrow.refund(terms_tuple(terms), seq, amount, merchant_funds),
        )

    def _merchant_fundable(self, books: Books, hold: Hold, spender: str) -> int:
        """What `spender` may pull from the merchant for `hold` now (0: not at all)."""
        if self.merchant in books.blocked or (books.paused and spender == self.operator):
            return 0
        return min(books.allowances[spender], hold.merchant_fundable())

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
        # The budget on the payment's running totals: this capture's share, less the carry.
        share = amount * terms.max_fee_bps
        budget = (share + BPS - 1 - hold.carry) // BPS
        fee_units = min(fee(amount, fee_bps), budget)
        left = budget - fee_units
        legs: list[Leg] = []
        for _ in range(data.draw(st.integers(0, min(LEGS_MAX, left)), label="legs")):
            if left == 0:
                break
            recipient = data.draw(st.sampled_from((self.other, self.sink)), label="leg to")
            legs.append(Leg(recipient, data.draw(st.integers(1, left), label="leg amount")))
            left -= legs[-1].amount
        taken = fee_units + sum(leg.amount for leg in legs)
        hold.carry = max(hold.carry + taken * BPS - share, 0)
        hold.captured += amount
        hold.taken += taken
        hold.capturable -= amount
        hold.refundable += amount
        hold.seq += 1
        books.pay(self.merchant, amount - taken)
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
        hold.seq = min(hold.seq + 1, SEQ_MAX)  # the payer's exit works at the cap too

    @precondition(lambda self: bool(self._candidates(self.books, "open_dispute")))
    @rule(data=st.data())
    def open_dispute(self, data: st.DataObject) -> None:
        hold = data.draw(st.sampled_from(self._candidates(self.books, "open_dispute")))
        self._open_dispute(data, hold)

    def _open_dispute(self, data: st.DataObject, hold: Hold) -> None:
        books = self.books
        fundable = self._merchant_fundable(books, hold, self.arbiter)
        merchant_funds = fundable > 0 and data.draw(st.booleans(), label="merchant funds")
        top = min(hold.refundable, fundable) if merchant_funds else hold.refundable
        amount = data.draw(st.integers(1, top), label="dispute amount")
        call = self.world.escrow.functions.openDispute(
            terms_tuple(hold.terms), hold.seq, amount, merchant_funds
        )
        self.world.arbiter.send(call)
        if merchant_funds:
            books.fund_by_merchant(hold, self.arbiter, self.merchant, amount)
        hold.refundable -= amount
        hold.frozen = amount
        hold.dispute_seq = hold.seq
        hold.dispute_merchant_funded = merchant_funds
        hold.seq += 1

    @precondition(lambda self: bool(self._candidates(self.books, "resolve_dispute")))
    @rule(data=st.data(), payer_wins=st.booleans())
    def resolve_dispute(self, data: st.DataObject, payer_wins: bool) -> None:
        hold = data.draw(st.sampled_from(self._candidates(self.books, "resolve_dispute")))
        # Any sequence from the one after the opening to the current one: what the arbiter saw
        # after opening stays valid however many operations the operator made since.
        seq = data.draw(st.integers(hold.dispute_seq + 1, hold.seq), label="resolve seq")
        call = self.world.escrow.functions.resolveDispute(terms_tuple(hold.terms), seq, payer_wins)
        self.world.arbiter.send(call)
        if payer_wins:
            self.books.pay(self.payer, hold.frozen)
        else:  # back to whoever funded it, and refundable again
            hold.refundable += hold.frozen
            if hold.dispute_merchant_funded:
                hold.merchant_funded -= hold.frozen
                self.books.pay(self.merchant, hold.frozen)
        hold.frozen = 0
        hold.seq = min(hold.seq + 1, SEQ_MAX)

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
        # Not a payment at the cap, where the stale sequence is the current one.
        targets = [hold for hold in self.books.holds.values() if hold.seq != SEQ_MAX]
        if replay_at is not None and targets:
            target = data.draw(st.sampled_from(targets))
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
        """Credits go to the credited account only: a blocked one cannot move them."""
        books = self.books
        owed = [account for account, amount in books.credits.items() if amount]
        account = data.draw(st.sampled_from(owed), label="withdrawer")
        call = self.world.escrow.functions.withdraw(self.token.address)
        if account in books.blocked:
            with reverts_with(self.world, "AccountBlocked", account=account):
                self.signers[account].send(call)
            return
        self.signers[account].send(call)
        books.balances[account] += books.credits[account]
        books.credits[account] = 0

    # ────────────────────────────── levers ──────────────────────────────

    @rule(data=st.data())
    def toggle_pause(self, data: st.DataObject) -> None:
        """While paused, a new hold and a merchant-funded refund revert; the rest goes on."""
        escrow = self.world.escrow.functions
        self.books.paused = not self.books.paused
        self.world.pauser.send(escrow.pause() if self.books.paused else escrow.unpause())
        if self.books.paused and (holds := self._candidates(self.books, "refund")):
            hold = data.draw(st.sampled_from(holds), label="paused refund")
            call = escrow.refund(terms_tuple(hold.terms), hold.seq, 1, True)
            with reverts_with(self.world, "EnforcedPause"):
                self.world.operator.send(call)

    @rule()
    def toggle_operator_role(self) -> None:
        """A revoked operator is refused every operation at once."""
        escrow = self.world.escrow.functions
        role = escrow.OPERATOR_ROLE().call()
        self.books.operator_revoked = not self.books.operator_revoked
        grant = escrow.revokeRole if self.books.operator_revoked else escrow.grantRole
        self.world.admin.send(grant(role, self.operator))
        if self.books.operator_revoked and self.books.holds:
            hold = next(iter(self.books.holds.values()))
            call = escrow.void(terms_tuple(hold.terms), hold.seq, 1)
            with reverts_with(self.world, "AccessControlUnauthorizedAccount"):
                self.world.operator.send(call)

    @rule(
        data=st.data(),
        spender_is_arbiter=st.booleans(),
        cap=st.sampled_from(FUNDING_CAPS),
    )
    def approve_funding(self, data: st.DataObject, spender_is_arbiter: bool, cap: int) -> None:
        """Sets a funding cap, then (if any hold is refundable) tries a merchant-funded refund
        just beyond what the cap and the payment's bound allow: refused by name."""
        spender = self.arbiter if spender_is_arbiter else self.operator
        self.world.merchant.send(self.world.escrow.functions.approveFunding(spender, cap))
        self.books.allowances[spender] = cap
        books = self.books
        holds = self._candidates(books, "refund")
        if spender_is_arbiter or not holds or books.paused or self.merchant in books.blocked:
            return
        hold = data.draw(st.sampled_from(holds), label="refund beyond the bounds")
        fundable = hold.merchant_fundable()
        if cap <= fundable:
            amount, error = cap + 1, "FundingAllowanceExceeded"
        else:
            amount, error = fundable + 1, "MerchantFundingExceeded"
        if amount > hold.refundable:
            return
        call = self.world.escrow.functions.refund(terms_tuple(hold.terms), hold.seq, amount, True)
        with reverts_with(self.world, error):
            self.world.operator.send(call)

    @precondition(lambda self: self.world.backend.name == "anvil")
    @precondition(lambda self: bool(self._candidates(self.books, "open_dispute")))
    @rule(data=st.data())
    def at_the_cap(self, data: st.DataObject) -> None:
        """Moves a payment to just below the sequence cap (as 65,534 operations would) and
        opens a dispute there, which takes the last sequence: the operator is then refused
        with SequenceExhausted, while the dispute still resolves (see `resolve_dispute`)."""
        hold = data.draw(st.sampled_from(self._candidates(self.books, "open_dispute")))
        slot = payment_slot(self.world, hold.id)
        w3 = self.world.backend.w3
        word = int.from_bytes(w3.eth.get_storage_at(self.world.escrow.address, slot), "big")
        word = (word & ((1 << 240) - 1)) | ((SEQ_MAX - 1) << 240)
        w3.provider.make_request(
            "anvil_setStorageAt",
            [self.world.escrow.address, hex(slot), "0x" + word.to_bytes(32, "big").hex()],
        )
        hold.seq = SEQ_MAX - 1
        self._open_dispute(data, hold)
        if hold.seq == SEQ_MAX and not self.books.operator_revoked:
            call = self.world.escrow.functions.void(terms_tuple(hold.terms), SEQ_MAX, 1)
            with reverts_with(self.world, "SequenceExhausted", paymentId=hold.id):
                self.world.operator.send(call)

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
            assert escrow.merchantFunded(hold.id).call() == hold.merchant_funded
            assert hold.taken <= fee(hold.captured, hold.terms.max_fee_bps)
            owed += capturable + frozen
        credits = {a: escrow.credits(self.token.address, a).call() for a in self.blockable}
        assert credits == self.books.credits
        balance = token.balanceOf(self.world.escrow.address).call()
        assert balance == owed + sum(credits.values())
        assert {a: token.balanceOf(a).call() for a in self.books.balances} == self.books.balances
        allowances = {
            spender: escrow.fundingAllowance(self.merchant, spender).call()
            for spender in self.books.allowances
        }
        assert allowances == self.books.allowances


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
