"""The transaction manager: gets each operation onto the chain exactly once.

`submit` records an operation under its idempotency key and gives it the next nonce of a
signer lane, in one SQL transaction; nothing is signed or sent yet. `pump` is one bounded step
of the worker loop: it reads the chain (one JSON-RPC batch), settles what was mined, repairs
what the node lost, replaces what is stuck, and sends what is queued.

How it never sends an operation twice:
* Every attempt for a record uses the record's one nonce and the same payload; attempts differ
  only in fees. The chain accepts one transaction per nonce, so at most one attempt is mined.
* An attempt is signed and stored (hash and raw bytes) before it is broadcast. After a crash
  or a timeout the hash is known, and the outcome is found by looking it up (receipt, pool,
  nonce); what a node lost is re-broadcast as the same bytes, which cannot apply twice.
* A nonce that the chain shows used, but by none of our attempts, is traced to the transaction
  that used it: one with this record's payload (signed elsewhere, e.g. by a process that died
  before recording it) is adopted; one with another payload marks the record `replaced`. The
  payload is never re-sent under a used nonce.

One process pumps a given lane at a time; any number may submit.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final, Protocol

from eth_account.signers.local import LocalAccount
from eth_utils import to_checksum_address
from sqlalchemy.exc import IntegrityError

from engine.chain.contracts.escrow import GAS_LIMIT_MAX, GAS_SAFETY_PERCENT
from engine.chain.contracts.reverts import decode_revert
from engine.chain.errors import (
    IdempotencyKeyReused,
    InsufficientFundsForGas,
    RpcRequestFailed,
    RpcUnavailable,
    TxChainMismatch,
    UnknownIdempotencyKey,
    UnknownLane,
)
from engine.chain.rpc import Rpc, RpcCall, call_object, hex_data, ok, quantity
from engine.chain.txmanager.fees import FeePolicy
from engine.chain.txmanager.settle import ChainView, PumpReport, Settler
from engine.chain.txmanager.sign import LaneSigner
from engine.store.db import Database, notify
from engine.store.transactions import (
    Attempt,
    Change,
    Fees,
    HistoryEntry,
    NewAttempt,
    NewTx,
    TxRecord,
    TxStatus,
    TxStore,
)

# Notified (engine.store.db.notify) when the node took transactions: what chain readers (the
# mirror worker) wait on, since a local node mines them at once.
SENT_CHANNEL: Final = "settle_sent"
SUBMIT_TRIES_MAX: Final = 3  # a concurrent submit of the same key costs one retry
PLAIN_TRANSFER_GAS: Final = 21_000


class Clock(Protocol):
    def now(self) -> int:
        """Unix seconds."""


class SystemClock:
    def now(self) -> int:
        return int(time.time())


@dataclass(frozen=True)
class TxManagerConfig:
    chain_id: int
    fees: FeePolicy
    # Blocks built on top of a transaction's block before it is final (networks.py presets).
    confirmations: int = 0
    gas_safety_percent: int = GAS_SAFETY_PERCENT
    # A sent transaction still unmined this long after its last attempt gets a fee bump.
    stuck_after_s: int = 60
    # Signed attempts per record: bounds replacements, and the hashes a lookup checks.
    attempts_max: int = 8
    # Attempts (new, replacements, re-broadcasts) broadcast in one pump.
    send_batch_max: int = 256
    # Unmined transactions per lane on the node: public nodes' pools cap a sender at ~64.
    in_flight_per_lane_max: int = 64
    # Unfinished records of a lane one pump looks at, lowest nonce first.
    lane_scan_max: int = 2048
    # Binary-search steps to find the block in which a nonce was used (2^64 blocks).
    nonce_search_steps_max: int = 64
    # Used nonces traced per pump (each a binary search of sequential calls).
    nonce_traces_max: int = 16

    def __post_init__(self) -> None:
        assert self.chain_id > 0, self
        assert self.confirmations >= 0, self
        assert self.gas_safety_percent >= 100, self
        assert self.stuck_after_s > 0, self
        assert self.attempts_max >= 1, self
        assert self.send_batch_max >= 1, self
        assert self.in_flight_per_lane_max >= 1, self
        assert self.lane_scan_max >= self.in_flight_per_lane_max, self


@dataclass(frozen=True)
class TxRequest:
    to: str
    data: bytes
    idempotency_key: str
    value: int = 0
    lane: str | None = None  # a signer address; None: the least loaded lane
    gas_limit: int | None = None  # None: estimate x gas_safety_percent


@dataclass(frozen=True)
class _Plan:
    """A new attempt to sign: the first for a record ("new") or a replacement ("bump")."""

    record: TxRecord
    fees: Fees
    kind: str


@dataclass(frozen=True)
class _Outgoing:
    record: TxRecord
    raw: bytes
    tx_hash: bytes
    fees: Fees
    kind: str  # "new", "bump" or "rebroadcast"


class TxManager:
    def __init__(
        self,
        database: Database,
        rpc: Rpc,
        signers: Sequence[LocalAccount],
        config: TxManagerConfig,
        clock: Clock,
    ) -> None:
        assert signers, "a transaction manager needs at least one signer"
        self._database = database
        self._rpc = rpc
        self._signers = {
            lane.address: lane
            for lane in (LaneSigner(account, config.chain_id) for account in signers)
        }
        assert len(self._signers) == len(signers), "signers must be distinct"
        self._config = config
        self._clock = clock
        self._store = TxStore(config.chain_id)
        self._settler = Settler(
            rpc, config.confirmations, config.nonce_search_steps_max, config.nonce_traces_max
        )
        self._prepared = False

    @property
    def lanes(self) -> tuple[str, ...]:
        return tuple(self._signers)

    @property
    def chain_id(self) -> int:
        return self._config.chain_id

    @property
    def rpc(self) -> Rpc:
        """The node connection, for callers that read the chain in step with their sends."""
        return self._rpc

    # -- submitting --

    def submit(
        self,
        to: str,
        data: bytes,
        value: int = 0,
        *,
        idempotency_key: str,
        lane: str | None = None,
        gas_limit: int | None = None,
    ) -> TxRecord:
        """Records the operation and its nonce; the same key returns the first record."""
        request = TxRequest(to, data, idempotency_key, value, lane, gas_limit)
        return self.submit_many([request])[0]

    def submit_many(self, requests: Sequence[TxRequest]) -> list[TxRecord]:
        """Like `submit` for many operations: one JSON-RPC batch of checks, one SQL transaction.

        Raises before recording anything: ContractReverted (the estimate reverts, decoded),
        InsufficientFundsForGas, FeeCapTooLow, IdempotencyKeyReused, UnknownLane,
        RpcUnavailable.
        """
        keys = [request.idempotency_key for request in requests]
        assert len(set(keys)) == len(keys), "idempotency keys repeat within one call"
        for request in requests:
            if request.lane is not None and to_checksum_address(request.lane) not in self._signers:
                raise UnknownLane(request.lane, self.lanes)
        with self._database.snapshot() as conn:
            done = self._store.by_keys(conn, keys)
        _check_same(requests, done)
        fresh = [request for request in requests if request.idempotency_key not in done]
        if fresh:
            self._prepare()
            new = self._checked(fresh)
            for _ in range(SUBMIT_TRIES_MAX):
                try:
                    with self._database.transaction() as conn:
                        raced = self._store.by_keys(conn, [tx.idempotency_key for tx in new])
                        _check_same(requests, raced)
                        done.update(raced)
                        new = [tx for tx in new if tx.idempotency_key not in raced]
                        if new:
                            inserted = self._store.insert(conn, new, self._clock.now())
                            done.update((record.idempotency_key, record) for record in inserted)
                    break
                except IntegrityError:  # another submitter committed one of these keys
                    continue
            else:
                raise RuntimeError(f"submit lost {SUBMIT_TRIES_MAX} races for the same keys")
        return [done[key] for key in keys]

    def _checked(self, requests: Sequence[TxRequest]) -> list[NewTx]:
        """Lanes, gas limits and funds for new requests, checked against the chain."""
        lanes = self._choose_lanes(requests)
        used_lanes = sorted(set(lanes))
        targets = [str(to_checksum_address(request.to)) for request in requests]
        calls: list[RpcCall] = [("eth_getBlockByNumber", ["latest", False])]
        calls += [("eth_getBalance", [lane, "latest"]) for lane in used_lanes]
        estimated = [request for request in requests if request.gas_limit is None]
        calls += [
            ("eth_estimateGas", [call_object(lane, to, request.data, request.value)])
            for request, lane, to in zip(requests, lanes, targets, strict=True)
            if request.gas_limit is None
        ]
        if self._config.fees.priority_fee_per_gas is None:
            calls.append(("eth_maxPriorityFeePerGas", []))
        results = self._rpc.batch(calls)
        block = ok(results[0])
        balances = dict(zip(used_lanes, results[1 : 1 + len(used_lanes)], strict=True))
        estimates = results[1 + len(used_lanes) : 1 + len(used_lanes) + len(estimated)]
        tip = self._config.fees.priority_fee_per_gas
        if tip is None:
            tip = quantity(ok(results[-1]))
        base_fee = quantity(block.get("baseFeePerGas", 0))
        self._config.fees.check_cap(base_fee)
        fees = self._config.fees.quote(base_fee, tip)
        gas_by_key: dict[str, int] = {}
        refused: RpcRequestFailed | None = None
        for request, estimate in zip(estimated, estimates, strict=True):
            if isinstance(estimate, RpcRequestFailed):
                if estimate.data:
                    raise decode_revert(estimate.data)
                refused = refused or estimate
                estimate = hex(PLAIN_TRANSFER_GAS)  # for the funds check, which names the fix
            gas = quantity(estimate) * self._config.gas_safety_percent // 100
            gas_by_key[request.idempotency_key] = min(gas, GAS_LIMIT_MAX)
        new: list[NewTx] = []
        need: dict[str, int] = dict.fromkeys(used_lanes, 0)
        for request, lane, to in zip(requests, lanes, targets, strict=True):
            gas = request.gas_limit or gas_by_key[request.idempotency_key]
            need[lane] += gas * fees.max_fee_per_gas + request.value
            new.append(NewTx(request.idempotency_key, lane, to, request.data, request.value, gas))
        # Only this call's worst case is checked; transactions already in flight are the
        # node's to refuse, and a refused send stays queued until the lane is funded.
        for lane in used_lanes:
            have = quantity(ok(balances[lane]))
            if have < need[lane]:
                raise InsufficientFundsForGas(lane, need[lane], have)
        if refused is not None:
            raise refused
        return new

    def _choose_lanes(self, requests: Sequence[TxRequest]) -> list[str]:
        with self._database.snapshot() as conn:
            load = self._store.open_counts(conn)
        load = {lane: load.get(lane, 0) for lane in self._signers}
        chosen = []
        for request in requests:
            if request.lane is not None:
                lane = str(to_checksum_address(request.lane))
            else:
                lane = min(load, key=lambda address: (load[address], address))
            load[lane] += 1
            chosen.append(lane)
        return chosen

    # -- reading records --

    def get(self, idempotency_key: str) -> TxRecord:
        with self._database.snapshot() as conn:
            found = self._store.by_keys(conn, [idempotency_key])
        if idempotency_key not in found:
            raise UnknownIdempotencyKey(idempotency_key)
        return found[idempotency_key]

    def get_many(self, keys: Sequence[str]) -> list[TxRecord]:
        with self._database.snapshot() as conn:
            found = self._store.by_keys(conn, keys)
        missing = [key for key in keys if key not in found]
        if missing:
            raise UnknownIdempotencyKey(missing[0])
        return [found[key] for key in keys]

    def history(self, idempotency_key: str) -> list[HistoryEntry]:
        record = self.get(idempotency_key)
        with self._database.snapshot() as conn:
            return self._store.history(conn, record.id)

    def attempts(self, idempotency_key: str) -> list[Attempt]:
        record = self.get(idempotency_key)
        with self._database.snapshot() as conn:
            return self._store.attempts_of(conn, [record.id])[record.id]

    # -- the worker step --

    def pump(self) -> PumpReport:
        """One bounded step: settle, repair, replace, send. Raises RpcUnavailable when the node
        does not answer; everything learned before that is already committed."""
        self._prepare()
        report = PumpReport()
        with self._database.snapshot() as conn:
            next_nonce = self._store.lane_nonces(conn)
            records = [
                record
                for lane in self._signers
                for record in self._store.open_records(conn, lane, self._config.lane_scan_max)
            ]
            attempts = self._store.attempts_of(conn, [record.id for record in records])
        report.open = len(records)
        if not records:
            # Nothing queued or in flight, so nothing to learn from the chain: an idle worker
            # does not ask it every step. Lanes catch up with outside sends before the next.
            return report
        view = self._view()
        self._sync_lanes(view, next_nonce)

        changes, settled = self._settler.settle(view, records, attempts, report)
        self._apply(changes)
        unsettled = [record for record in records if record.id not in settled]
        rebroadcasts, priced_out = self._repair(view, unsettled, attempts, report)
        plans = self._bump(view, unsettled, attempts, rebroadcasts, priced_out, report)
        plans += self._new_sends(view, unsettled, attempts, len(rebroadcasts) + len(plans))
        self._send(rebroadcasts, plans, report)
        return report

    def _prepare(self) -> None:
        """Checks the chain id and creates missing lanes at the chain's nonce, once."""
        if self._prepared:
            return
        lanes = list(self._signers)
        results = self._rpc.batch(
            [("eth_chainId", [])] + [("eth_getTransactionCount", [a, "pending"]) for a in lanes]
        )
        chain_id = quantity(ok(results[0]))
        if chain_id != self._config.chain_id:
            raise TxChainMismatch(self._config.chain_id, chain_id)
        with self._database.snapshot() as conn:
            known = self._store.lane_nonces(conn)
        for lane, pending in zip(lanes, results[1:], strict=True):
            if lane in known:
                continue
            try:
                with self._database.transaction() as conn:
                    self._store.add_lane(conn, lane, quantity(ok(pending)), self._clock.now())
            except IntegrityError:  # another manager created it first
                pass
        self._prepared = True

    def _view(self) -> ChainView:
        lanes = list(self._signers)
        calls: list[RpcCall] = [("eth_getBlockByNumber", ["latest", False])]
        for lane in lanes:
            calls += [
                ("eth_getTransactionCount", [lane, "latest"]),
                ("eth_getTransactionCount", [lane, "pending"]),
            ]
        if self._config.fees.priority_fee_per_gas is None:
            calls.append(("eth_maxPriorityFeePerGas", []))
        results = self._rpc.batch(calls)
        block = ok(results[0])
        tip = self._config.fees.priority_fee_per_gas
        if tip is None:
            tip = quantity(ok(results[-1]))
        return ChainView(
            block_number=quantity(block["number"]),
            base_fee=quantity(block.get("baseFeePerGas", 0)),
            tip=tip,
            latest_nonce={lane: quantity(ok(results[1 + 2 * i])) for i, lane in enumerate(lanes)},
            pending_nonce={lane: quantity(ok(results[2 + 2 * i])) for i, lane in enumerate(lanes)},
        )

    def _sync_lanes(self, view: ChainView, next_nonce: dict[str, int]) -> None:
        """Moves a lane past nonces that something else used with the same key."""
        outside = {
            lane: view.pending_nonce[lane]
            for lane in self._signers
            if view.pending_nonce[lane] > next_nonce.get(lane, 0)
        }
        if outside:
            with self._database.transaction() as conn:
                for lane, nonce in outside.items():
                    self._store.advance_lane(conn, lane, nonce)

    # -- repairing: lost and ambiguous sends --

    def _repair(
        self,
        view: ChainView,
        records: Sequence[TxRecord],
        attempts: dict[int, list[Attempt]],
        report: PumpReport,
    ) -> tuple[list[_Outgoing], set[int]]:
        """Looks up every attempt whose fate is unknown (send unconfirmed, or the node's pool
        has a gap at its nonce); found ones are sent, lost ones are re-broadcast as is.

        Returns the re-broadcasts, and the lost records whose fees are below the base fee:
        nodes refuse (and evict) those, so they need new fees rather than the same bytes.
        """
        doubtful = [
            record
            for record in records
            if attempts[record.id]
            and (
                record.status == TxStatus.QUEUED
                or record.nonce >= view.pending_nonce[record.sender]
            )
        ]
        if not doubtful:
            return [], set()
        calls: list[RpcCall] = [
            ("eth_getTransactionByHash", [hex_data(attempt.tx_hash)])
            for record in doubtful
            for attempt in attempts[record.id]
        ]
        results = iter(self._rpc.batch(calls))
        found: list[tuple[TxRecord, bytes]] = []
        outgoing: list[_Outgoing] = []
        priced_out: set[int] = set()
        for record in doubtful:
            seen = [
                attempt.tx_hash for attempt in attempts[record.id] if ok(next(results)) is not None
            ]
            if seen:
                found.append((record, seen[-1]))
                continue
            newest = attempts[record.id][-1]
            if newest.fees.max_fee_per_gas < view.base_fee:
                priced_out.add(record.id)
                continue
            outgoing.append(
                _Outgoing(record, newest.raw, newest.tx_hash, newest.fees, "rebroadcast")
            )
        changes = [
            Change(
                record.id,
                TxStatus.SENT,
                "found_by_lookup",
                "the node has it though its send was not acknowledged",
                tx_hash,
                {"sent_at": self._clock.now()},
            )
            for record, tx_hash in found
            if record.status == TxStatus.QUEUED
        ]
        report.found += len(changes)
        if found:
            with self._database.transaction() as conn:
                self._store.mark_broadcast(conn, [h for _, h in found], self._clock.now())
                self._store.apply(conn, changes, self._clock.now())
        return outgoing, priced_out

    # -- replacing stuck transactions --

    def _bump(
        self,
        view: ChainView,
        records: Sequence[TxRecord],
        attempts: dict[int, list[Attempt]],
        rebroadcasts: Sequence[_Outgoing],
        priced_out: set[int],
        report: PumpReport,
    ) -> list[_Plan]:
        """New fees for records the node evicted as priced out, and for sent records unmined
        for stuck_after_s, except those waiting behind a lost lower nonce of their lane."""
        now = self._clock.now()
        lost_from: dict[str, int] = {}
        lost = [item.record for item in rebroadcasts] + [r for r in records if r.id in priced_out]
        for record in lost:
            lost_from[record.sender] = min(lost_from.get(record.sender, record.nonce), record.nonce)
        market = self._config.fees.quote(view.base_fee, view.tip)
        bumps: list[tuple[TxRecord, Fees]] = []
        notes: list[Change] = []
        for record in records:
            stuck = (
                record.status == TxStatus.SENT
                and record.nonce < lost_from.get(record.sender, record.nonce + 1)
                and record.sent_at is not None
                and now - record.sent_at >= self._config.stuck_after_s
            )
            if not stuck and record.id not in priced_out:
                continue
            if len(bumps) + len(rebroadcasts) >= self._config.send_batch_max:
                break
            if record.attempts >= self._config.attempts_max:
                notes += _note_once(record, "attempts_exhausted", "no more replacements allowed")
                continue
            fees = self._config.fees.bump(attempts[record.id][-1].fees, market)
            if fees is None:
                notes += _note_once(
                    record, "fee_cap_reached", "a replacement would exceed the max fee cap"
                )
                continue
            bumps.append((record, fees))
        self._apply(notes)
        report.bumped += len(bumps)
        return [_Plan(record, fees, "bump") for record, fees in bumps]

    # -- sending new transactions --

    def _new_sends(
        self,
        view: ChainView,
        records: Sequence[TxRecord],
        attempts: dict[int, list[Attempt]],
        already_sending: int,
    ) -> list[_Plan]:
        room = self._config.send_batch_max - already_sending
        fees = self._config.fees.quote(view.base_fee, view.tip)
        in_flight: dict[str, int] = {}
        for record in records:
            if attempts[record.id]:
                in_flight[record.sender] = in_flight.get(record.sender, 0) + 1
        chosen: list[tuple[TxRecord, Fees]] = []
        for record in records:  # lowest nonce first within each lane
            if len(chosen) >= room:
                break
            if attempts[record.id] or record.status != TxStatus.QUEUED:
                continue
            if in_flight.get(record.sender, 0) >= self._config.in_flight_per_lane_max:
                continue
            in_flight[record.sender] = in_flight.get(record.sender, 0) + 1
            chosen.append((record, fees))
        return [_Plan(record, fees, "new") for record, fees in chosen]

    def _send(
        self, rebroadcasts: Sequence[_Outgoing], plans: Sequence[_Plan], report: PumpReport
    ) -> None:
        """Signs and stores the plans, then broadcasts everything, lowest nonce of each lane
        first. The attempts are committed before the broadcast, so a crash in between leaves
        hashes to look up rather than transactions nobody knows about."""
        if not rebroadcasts and not plans:
            return
        items = self._signed(
            sorted(
                [*rebroadcasts, *plans], key=lambda item: (item.record.sender, item.record.nonce)
            )
        )
        calls: list[RpcCall] = [("eth_sendRawTransaction", [hex_data(item.raw)]) for item in items]
        try:
            results = self._rpc.batch(calls)
        except RpcUnavailable as error:
            self._apply(
                [
                    Change(
                        item.record.id,
                        item.record.status,
                        "send_unacknowledged",
                        f"{error.reason}: outcome unknown, to be looked up",
                        item.tx_hash,
                    )
                    for item in items
                ]
            )
            raise
        self._record_broadcast(items, results, report)

    def _signed(self, items: Sequence[_Outgoing | _Plan]) -> list[_Outgoing]:
        """Signs the plans among `items` and commits their attempts; only then may they go."""
        signed: list[_Outgoing] = []
        new_attempts = []
        for item in items:
            if isinstance(item, _Outgoing):
                signed.append(item)
                continue
            record, fees = item.record, item.fees
            tx = self._signers[record.sender].sign(
                record.nonce, record.to, record.value, record.data, record.gas_limit, fees
            )
            new_attempts.append(NewAttempt(record.id, tx.tx_hash, tx.raw, fees))
            signed.append(_Outgoing(record, tx.raw, tx.tx_hash, fees, item.kind))
        if new_attempts:
            with self._database.transaction() as conn:
                self._store.add_attempts(conn, new_attempts, self._clock.now())
        return signed

    def _record_broadcast(
        self, items: Sequence[_Outgoing], results: Sequence[Any], report: PumpReport
    ) -> None:
        now = self._clock.now()
        acknowledged: list[bytes] = []
        changes: list[Change] = []
        for item, result in zip(items, results, strict=True):
            problem = _send_problem(result)
            if problem is None:
                acknowledged.append(item.tx_hash)
                report.sent += item.kind == "new"
                report.rebroadcast += item.kind == "rebroadcast"
                changes.append(
                    Change(
                        item.record.id,
                        TxStatus.SENT,
                        _SENT_EVENTS[item.kind],
                        _send_detail(item),
                        item.tx_hash,
                        {"sent_at": now, "error_code": None, "error_message": None},
                    )
                )
                continue
            report.rejected += 1
            code, message = problem
            report.problems.append(f"{item.record.idempotency_key}: {message}")
            if (item.record.error_code, item.record.error_message) != (code, message):
                changes.append(
                    Change(
                        item.record.id,
                        item.record.status,
                        "send_rejected",
                        message,
                        item.tx_hash,
                        {"error_code": code, "error_message": message},
                    )
                )
        with self._database.transaction() as conn:
            self._store.mark_broadcast(conn, acknowledged, now)
            self._store.apply(conn, changes, now)
            if acknowledged:
                notify(conn, SENT_CHANNEL)  # the chain is about to change: readers look

    def _apply(self, changes: Sequence[Change]) -> None:
        if changes:
            with self._database.transaction() as conn:
                self._store.apply(conn, changes, self._clock.now())


def _check_same(requests: Sequence[TxRequest], recorded: dict[str, TxRecord]) -> None:
    """A key already recorded must come back with the same payload (and lane, if named)."""
    for request in requests:
        record = recorded.get(request.idempotency_key)
        if record is None:
            continue
        lane_differs = request.lane is not None and (
            to_checksum_address(request.lane) != record.sender
        )
        if lane_differs or not record.same_payload(request.to, request.data, request.value):
            raise IdempotencyKeyReused(request.idempotency_key)


def _note_once(record: TxRecord, code: str, detail: str) -> list[Change]:
    if record.error_code == code:
        return []
    return [Change(record.id, record.status, code, detail, fields={"error_code": code})]


_SENT_EVENTS = {"new": "sent", "bump": "replaced_by_bump", "rebroadcast": "rebroadcast"}
_ALREADY_KNOWN = ("already imported", "already known", "known transaction")
_SEND_PROBLEMS = (
    ("nonce too low", "nonce_used"),
    ("insufficient funds", "insufficient_funds_for_gas"),
    ("underpriced", "fee_too_low"),
    ("fee too low", "fee_too_low"),
    ("less than block base fee", "fee_too_low"),
)


def _send_problem(result: Any) -> tuple[str, str] | None:
    """None when the node holds the transaction, else (error code, the node's message)."""
    if not isinstance(result, RpcRequestFailed):
        return None
    message = result.rpc_message.lower()
    if any(known in message for known in _ALREADY_KNOWN):
        return None
    for fragment, code in _SEND_PROBLEMS:
        if fragment in message:
            return code, result.rpc_message
    return "send_rejected", result.rpc_message


def _send_detail(item: _Outgoing) -> str:
    if item.kind == "rebroadcast":
        return "the node had lost it; the same signed bytes were sent again"
    fees = item.fees
    return (
        f"nonce {item.record.nonce}, max fee {fees.max_fee_per_gas} wei, "
        f"tip {fees.max_priority_fee_per_gas} wei per gas"
    )
