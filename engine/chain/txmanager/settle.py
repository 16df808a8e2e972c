"""Settling: what the chain says about transactions already sent, turned into status changes.

Reads receipts (one JSON-RPC batch) only for records whose nonce the chain shows as used, since
no other record can have one. A receipt moves a record to mined, and at the confirmation depth
to confirmed or failed (with the revert replayed and decoded). A used nonce without a receipt
for any recorded attempt is traced to the transaction that used it. A mined record whose block
left the chain goes back to sent.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_utils import to_checksum_address

from engine.chain.contracts.reverts import decode_revert
from engine.chain.errors import RpcRequestFailed
from engine.chain.rpc import Rpc, RpcCall, call_object, data, hex_data, ok, quantity
from engine.store.transactions import Attempt, Change, TxRecord, TxStatus


@dataclass(frozen=True)
class ChainView:
    """The chain as one pump sees it, read in one batch at its start."""

    block_number: int
    base_fee: int
    tip: int
    latest_nonce: dict[str, int]  # per lane: transactions mined
    pending_nonce: dict[str, int]  # per lane: mined plus executable in the node's pool


@dataclass
class PumpReport:
    """What one pump did; `open` counts the unfinished records it looked at."""

    open: int = 0
    sent: int = 0
    rebroadcast: int = 0
    bumped: int = 0
    found: int = 0
    mined: int = 0
    confirmed: int = 0
    failed: int = 0
    replaced: int = 0
    adopted: int = 0
    reorged: int = 0
    rejected: int = 0
    problems: list[str] = field(default_factory=list)


class Settler:
    def __init__(
        self, rpc: Rpc, confirmations: int, nonce_search_steps_max: int, nonce_traces_max: int
    ) -> None:
        self._rpc = rpc
        self._confirmations = confirmations
        self._nonce_search_steps_max = nonce_search_steps_max
        self._nonce_traces_max = nonce_traces_max

    def settle(
        self,
        view: ChainView,
        records: Sequence[TxRecord],
        attempts: Mapping[int, Sequence[Attempt]],
        report: PumpReport,
    ) -> tuple[list[Change], set[int]]:
        """The changes that the chain's state calls for, and the ids of the records whose
        nonce the chain has used (nothing to send for those)."""
        changes = self._reorged_below_depth(view, records, report)
        used = [r for r in records if r.nonce < view.latest_nonce[r.sender]]
        if not used:
            return changes, set()
        hashes_of = {record.id: known_hashes(record, attempts[record.id]) for record in used}
        watched = [
            record
            for record in used
            if record.status != TxStatus.MINED or self._deep_enough(view, record.block_number)
        ]
        calls: list[RpcCall] = [
            ("eth_getTransactionReceipt", [hex_data(tx_hash)])
            for record in watched
            for tx_hash in hashes_of[record.id]
        ]
        results = iter(self._rpc.batch(calls))
        receipts: dict[int, dict[str, Any]] = {}
        for record in watched:
            for _ in hashes_of[record.id]:
                receipt = ok(next(results))
                if receipt is not None:
                    receipts[record.id] = receipt
        reasons = self._revert_reasons(
            [(record, receipts[record.id]) for record in watched if record.id in receipts]
        )
        traces_left = self._nonce_traces_max
        for record in watched:
            receipt = receipts.get(record.id)
            if receipt is not None:
                changes += self._mined(view, record, receipt, reasons.get(record.id), report)
            elif record.status == TxStatus.MINED:
                report.reorged += 1
                changes.append(_reorged_out(record))
            elif traces_left > 0:
                traces_left -= 1
                changes += self._nonce_used_elsewhere(view, record, report)
        return changes, {record.id for record in used}

    def _reorged_below_depth(
        self, view: ChainView, records: Sequence[TxRecord], report: PumpReport
    ) -> list[Change]:
        """Mined records whose nonce the chain no longer shows used: their block is gone."""
        gone = [
            r
            for r in records
            if r.status == TxStatus.MINED and r.nonce >= view.latest_nonce[r.sender]
        ]
        report.reorged += len(gone)
        return [_reorged_out(record) for record in gone]

    def _deep_enough(self, view: ChainView, block_number: int | None) -> bool:
        assert block_number is not None
        # A receipt read after the view may come from a newer block: that block exists.
        head = max(view.block_number, block_number)
        return head - block_number >= self._confirmations

    def _mined(
        self,
        view: ChainView,
        record: TxRecord,
        receipt: dict[str, Any],
        reason: str | None,
        report: PumpReport,
    ) -> list[Change]:
        tx_hash = data(receipt["transactionHash"])
        block_number = quantity(receipt["blockNumber"])
        block_hash = data(receipt["blockHash"])
        succeeded = quantity(receipt["status"]) == 1
        changes = []
        if record.status != TxStatus.MINED or record.block_hash != block_hash:
            report.mined += 1
            if record.status == TxStatus.MINED:
                report.reorged += 1
            outcome = "succeeded" if succeeded else f"reverted: {reason}"
            changes.append(
                Change(
                    record.id,
                    TxStatus.MINED,
                    "mined" if record.status != TxStatus.MINED else "reorged",
                    f"block {block_number}, {outcome}",
                    tx_hash,
                    {
                        "tx_hash": tx_hash,
                        "block_number": block_number,
                        "block_hash": block_hash,
                        "receipt_status": 1 if succeeded else 0,
                        "gas_used": quantity(receipt["gasUsed"]),
                        "error_code": None if succeeded else "contract_reverted",
                        "error_message": None if succeeded else reason,
                    },
                )
            )
        if self._deep_enough(view, block_number):
            final = TxStatus.CONFIRMED if succeeded else TxStatus.FAILED
            if succeeded:
                report.confirmed += 1
            else:
                report.failed += 1
            depth = max(view.block_number, block_number) - block_number
            changes.append(Change(record.id, final, final.value, f"{depth} blocks deep", tx_hash))
        return changes

    def _revert_reasons(self, mined: Sequence[tuple[TxRecord, dict[str, Any]]]) -> dict[int, str]:
        """Replays reverted transactions at their block to decode the custom error."""
        reverted = [(r, receipt) for r, receipt in mined if quantity(receipt["status"]) != 1]
        if not reverted:
            return {}
        calls: list[RpcCall] = [
            (
                "eth_call",
                [
                    {
                        **call_object(record.sender, record.to, record.data, record.value),
                        "gas": hex(record.gas_limit),
                    },
                    hex(quantity(receipt["blockNumber"])),
                ],
            )
            for record, receipt in reverted
        ]
        reasons = {}
        for (record, receipt), result in zip(reverted, self._rpc.batch(calls), strict=True):
            if isinstance(result, RpcRequestFailed) and result.data:
                reasons[record.id] = str(decode_revert(result.data))
            else:
                block = quantity(receipt["blockNumber"])
                reasons[record.id] = f"Reverted(replay at block {block} did not reproduce it)"
        return reasons

    def _nonce_used_elsewhere(
        self, view: ChainView, record: TxRecord, report: PumpReport
    ) -> list[Change]:
        """The chain used this nonce, but not with any attempt recorded here: find by what."""
        user = self._nonce_user(record.sender, record.nonce, view.block_number)
        if user is None:
            report.problems.append(
                f"nonce {record.nonce} of {record.sender} was used, but the transaction that "
                "used it was not found (the node may lack historical state)"
            )
            if record.error_code == "nonce_used_unidentified":
                return []
            return [
                Change(
                    record.id,
                    record.status,
                    "nonce_used_unidentified",
                    "the chain used this nonce; the transaction that used it was not found",
                    fields={"error_code": "nonce_used_unidentified"},
                )
            ]
        user_hash = data(user["hash"])
        same = record.same_payload(
            to_checksum_address(user["to"]) if user.get("to") else "",
            data(user["input"]),
            quantity(user["value"]),
        )
        if same:
            receipt = ok(self._rpc.call("eth_getTransactionReceipt", [hex_data(user_hash)]))
            if receipt is None:
                return []
            report.adopted += 1
            adopted = Change(
                record.id,
                record.status,
                "adopted",
                "the nonce was used by a transaction with this payload that was signed outside "
                "this manager's records (e.g. before a crash); it is this operation",
                user_hash,
            )
            reason = self._revert_reasons([(record, receipt)]).get(record.id)
            return [adopted, *self._mined(view, record, receipt, reason, report)]
        block_number = quantity(user["blockNumber"])
        if not self._deep_enough(view, block_number):
            return []
        report.replaced += 1
        message = (
            f"nonce {record.nonce} was used by {hex_data(user_hash)} in block {block_number}, "
            "a transaction with another payload not sent by this manager; this operation did "
            "not happen and needs a new submit"
        )
        return [
            Change(
                record.id,
                TxStatus.REPLACED,
                "nonce_used_elsewhere",
                message,
                user_hash,
                {"error_code": "nonce_used_elsewhere", "error_message": message},
            )
        ]

    def _nonce_user(self, sender: str, nonce: int, latest_block: int) -> dict[str, Any] | None:
        """The mined transaction of `sender` with `nonce`: binary search for the first block
        after which the sender's count exceeds `nonce`, then read that block."""
        low, high = 0, latest_block  # count(high) > nonce is known; find the first such block
        try:
            for _ in range(self._nonce_search_steps_max):
                if low >= high:
                    break
                middle = (low + high) // 2
                count = quantity(self._rpc.call("eth_getTransactionCount", [sender, hex(middle)]))
                if count > nonce:
                    high = middle
                else:
                    low = middle + 1
            block = self._rpc.call("eth_getBlockByNumber", [hex(high), True])
        except RpcRequestFailed:
            return None
        for tx in (block or {}).get("transactions", []):
            if (
                isinstance(tx, dict)
                and to_checksum_address(tx["from"]) == sender
                and quantity(tx["nonce"]) == nonce
            ):
                return {**tx, "blockNumber": high}
        return None


def _reorged_out(record: TxRecord) -> Change:
    return Change(
        record.id,
        TxStatus.SENT,
        "reorged_out",
        f"block {record.block_number} left the chain; waiting to be mined again",
        record.tx_hash,
        {"block_number": None, "block_hash": None, "receipt_status": None},
    )


def known_hashes(record: TxRecord, attempts: Sequence[Attempt]) -> list[bytes]:
    hashes = [attempt.tx_hash for attempt in attempts]
    if record.tx_hash is not None and record.tx_hash not in hashes:
        hashes.append(record.tx_hash)  # adopted: signed outside this manager
    return hashes
