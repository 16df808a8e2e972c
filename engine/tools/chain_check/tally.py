"""The chain check's count, made after quiescence (faults off, every record final, the indexer
at the head):

* sent: operations the manager recorded (all of them unless a round bound was hit);
* applied_once, duplicates, lost: the planned operations by their effect on the canonical
  chain, read from the escrow events that name them (Authorized for an authorize, Captured for
  a capture, by payment id) and the canonical transactions that carry their calldata. lost: no
  event; duplicates: more than one event or more than one mined transaction; applied_once:
  the rest. The contract refuses a second authorize or capture (PaymentExists, StaleSequence),
  so counting mined transactions is what exposes a manager that sent an operation twice;
* reorgs, dropped, timeouts, disconnects, restarts, interval_blocks: the faults that happened
  (engine.tools.chain_check.faults);
* indexer_matches_chain: the consumer's live logs (delivered pending or confirmed, minus those
  reported removed) equal eth_getLogs of the escrow over the whole chain, field for field.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address

from engine.chain.contracts.logs import Authorized, Captured, decode_event, event_topics
from engine.chain.indexer.log_indexer import EscrowLog, LogKey, LogNotice, LogStage
from engine.chain.rpc import HttpRpc, data, hex_data, quantity
from engine.tools.chain_check.faults import FaultKind
from engine.tools.chain_check.workload import Operation


@dataclass(frozen=True)
class ChainCheckResult:
    """The issue's fields first, in its order; then the faults it names without a field."""

    sent: int
    applied_once: int
    duplicates: int
    lost: int
    reorgs: int
    dropped: int
    timeouts: int
    indexer_matches_chain: bool
    disconnects: int
    restarts: int
    interval_blocks: int

    @property
    def passed(self) -> bool:
        return self.duplicates == 0 and self.lost == 0 and self.indexer_matches_chain

    def to_dict(self) -> dict[str, int | bool]:
        return asdict(self)


@dataclass
class LiveLogs:
    """The consumer: what the indexer delivered, minus what it reported removed, applied in
    delivery order (a log can be removed and come back)."""

    logs: dict[LogKey, EscrowLog] = field(default_factory=dict)
    consistent: bool = True  # False once a removal named a log that was not live

    def apply(self, notices: Sequence[LogNotice]) -> None:
        for notice in notices:
            if notice.stage is LogStage.REMOVED:
                self.consistent &= self.logs.pop(notice.log.key, None) is not None
            else:
                self.logs[notice.log.key] = notice.log


def tally(
    node: HttpRpc,
    escrow: ChecksumAddress,
    operations: Sequence[Operation],
    sent: int,
    live: LiveLogs,
    faults: Mapping[FaultKind, int],
) -> ChainCheckResult:
    """Counts every operation's effect on the canonical chain that `node` serves."""
    head = quantity(node.call("eth_blockNumber", []))
    blocks = node.batch(
        [("eth_getBlockByNumber", [hex(number), True]) for number in range(head + 1)]
    )
    timestamps: dict[int, int] = {}
    mined: Counter[bytes] = Counter()
    for number, block in enumerate(blocks):
        assert isinstance(block, dict) and quantity(block["number"]) == number, block
        timestamps[number] = quantity(block["timestamp"])
        mined.update(
            data(tx["input"])
            for tx in block["transactions"]
            if tx["to"] and to_checksum_address(tx["to"]) == escrow
        )
    canonical = _canonical_logs(node, escrow, head, timestamps)
    applied: Counter[tuple[str, bytes]] = Counter()
    for log in canonical.values():
        if isinstance(log.event, Authorized):
            applied["authorize", log.event.payment_id] += 1
        elif isinstance(log.event, Captured):
            applied["capture", log.event.payment_id] += 1
    applied_once = duplicates = lost = 0
    for operation in operations:
        times = applied[operation.kind, operation.payment_id]
        if times == 0:
            lost += 1
        elif times > 1 or mined[operation.request.data] > 1:
            duplicates += 1
        else:
            applied_once += 1
    return ChainCheckResult(
        sent=sent,
        applied_once=applied_once,
        duplicates=duplicates,
        lost=lost,
        reorgs=faults[FaultKind.REORG],
        dropped=faults[FaultKind.DROP],
        timeouts=faults[FaultKind.TIMEOUT],
        indexer_matches_chain=live.consistent and live.logs == canonical,
        disconnects=faults[FaultKind.DISCONNECT],
        restarts=faults[FaultKind.RESTART],
        interval_blocks=faults[FaultKind.INTERVAL],
    )


def _canonical_logs(
    node: HttpRpc, escrow: ChecksumAddress, head: int, timestamps: dict[int, int]
) -> dict[LogKey, EscrowLog]:
    """The escrow's payment logs from eth_getLogs, in the indexer's form."""
    logs = node.call(
        "eth_getLogs",
        [
            {
                "address": escrow,
                "fromBlock": hex(0),
                "toBlock": hex(head),
                "topics": [[hex_data(topic) for topic in event_topics()]],
            }
        ],
    )
    found: dict[LogKey, EscrowLog] = {}
    for log in logs:
        number = quantity(log["blockNumber"])
        key = LogKey(
            data(log["blockHash"]), data(log["transactionHash"]), quantity(log["logIndex"])
        )
        found[key] = EscrowLog(
            block_number=number,
            block_hash=key.block_hash,
            block_timestamp=timestamps[number],
            tx_hash=key.tx_hash,
            log_index=key.log_index,
            event=decode_event([data(t) for t in log["topics"]], data(log["data"])),
        )
    return found
