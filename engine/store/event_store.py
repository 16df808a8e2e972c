"""The append-only, hash-chained event store (DESIGN §5.2 and §5.5).

Events are appended inside the caller's transaction, so that a command's events, its outbox
row and its ledger entries commit together or not at all. Each stream is a hash chain:

    hash = sha256(prev_hash || canonical_json([stream_id, version, kind, payload, occurred_at]))

with 32 zero bytes before the first event. Editing, reordering or deleting a stored event
breaks the chain, and `verify` finds where. There is deliberately no update or delete.

Payloads are JSON built from dicts, lists, strings, ints and bools only: floats have no place
near money (DESIGN §3), and null is left out so that "absent" has one spelling (omit the key).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import ClassVar, NamedTuple, TypeAlias, cast

from sqlalchemy import Connection, Row, exists, func, select

from engine.store.db import Database, insert_rows, one_of, update_rows
from engine.store.schema import (
    HASH_BYTES,
    KIND_LENGTH_MAX,
    STREAM_ID_LENGTH_MAX,
    events,
    streams,
)

Json: TypeAlias = int | str | bool | list["Json"] | dict[str, "Json"]
Payload: TypeAlias = dict[str, Json]

GENESIS_HASH = bytes(HASH_BYTES)

EVENTS_PER_APPEND_MAX = 1_000
STREAMS_PER_APPEND_MAX = 5_000
# Stream ids one look-up binds: well inside every backend's parameter limit.
_STREAMS_PER_QUERY_MAX = 500
PAYLOAD_BYTES_MAX = 65_536
PAYLOAD_DEPTH_MAX = 32
# Wide enough for any uint256 amount and its negation; bounds the cost of int-to-text.
PAYLOAD_INT_MAGNITUDE_LIMIT = 2**256
READ_ALL_LIMIT_MAX = 10_000
_VERIFY_FETCH_ROWS = 1_000
_OCCURRED_AT_LIMIT = 2**63


class StoreError(Exception):
    """An error a caller can cause, with a stable machine-readable code."""

    code: ClassVar[str]


class ConcurrencyConflict(StoreError):
    """The stream moved on since the caller read it; reload, re-decide and retry."""

    code = "conflict"

    def __init__(self, stream_id: str, expected_version: int, actual_version: int) -> None:
        super().__init__(
            f"stream {stream_id!r} is at version {actual_version}, "
            f"not the expected {expected_version}"
        )
        self.stream_id = stream_id
        self.expected_version = expected_version
        self.actual_version = actual_version


class InvalidEvent(StoreError):
    """The event cannot be stored as given (for example a float in its payload)."""

    code = "invalid_event"


@dataclass(frozen=True, slots=True)
class NewEvent:
    kind: str
    payload: Mapping[str, Json]
    occurred_at: int  # unix seconds, from the caller's clock


@dataclass(frozen=True, slots=True)
class StreamAppend:
    """Events for one stream, which must be at ``expected_version`` (0: a new stream)."""

    stream_id: str
    expected_version: int
    events: Sequence[NewEvent]


@dataclass(frozen=True, slots=True)
class StoredEvent:
    position: int  # global order over all streams
    stream_id: str
    version: int  # 1 for a stream's first event
    kind: str
    payload: Payload
    occurred_at: int
    hash: bytes
    prev_hash: bytes


class ChainBreak(NamedTuple):
    stream_id: str
    version: int
    reason: str


@dataclass(frozen=True, slots=True)
class AuditResult:
    streams: int
    events: int
    first_bad: ChainBreak | None

    @property
    def ok(self) -> bool:
        return self.first_bad is None


def canonical_json(value: Json | Sequence[Json]) -> str:
    """The one text form of a JSON value: sorted keys, no spaces, UTF-8 kept as is."""
    return json.dumps(
        value, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    )


def chain_hash(
    prev_hash: bytes,
    stream_id: str,
    version: int,
    kind: str,
    payload: Payload,
    occurred_at: int,
) -> bytes:
    document = canonical_json([stream_id, version, kind, payload, occurred_at])
    return hashlib.sha256(prev_hash + document.encode("utf-8")).digest()


class EventStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    def append(
        self,
        conn: Connection,
        stream_id: str,
        expected_version: int,
        new_events: Sequence[NewEvent],
    ) -> list[StoredEvent]:
        """Append `new_events` to a stream that must be at `expected_version` (0: new stream).

        Runs in the caller's transaction and writes nothing before every check has passed, so
        a ConcurrencyConflict or InvalidEvent leaves the transaction as it was.
        """
        return self.append_many(conn, [StreamAppend(stream_id, expected_version, new_events)])[0]

    def append_many(
        self, conn: Connection, appends: Sequence[StreamAppend]
    ) -> list[list[StoredEvent]]:
        """``append`` to many streams at once, with one statement per table whatever their
        number: the chain mirror books a whole poll, and a command batch many payments, this
        way. All of it is written, or (on any error) none of it."""
        if not 1 <= len(appends) <= STREAMS_PER_APPEND_MAX:
            raise InvalidEvent(f"append to 1 to {STREAMS_PER_APPEND_MAX} streams at a time")
        checked: list[tuple[str, int, list[tuple[str, Payload, str, int]]]] = []
        for item in appends:
            _check_text("stream_id", item.stream_id, STREAM_ID_LENGTH_MAX)
            version = item.expected_version
            if isinstance(version, bool) or not isinstance(version, int):
                raise InvalidEvent("expected_version must be an int")
            if version < 0:
                raise InvalidEvent("expected_version must not be negative")
            if not 1 <= len(item.events) <= EVENTS_PER_APPEND_MAX:
                raise InvalidEvent(f"append 1 to {EVENTS_PER_APPEND_MAX} events at a time")
            checked.append((item.stream_id, version, [_checked(e) for e in item.events]))
        if len({stream_id for stream_id, _, _ in checked}) != len(checked):
            raise InvalidEvent("append to each stream once per call")

        self._db.lock_for_append(conn)
        heads = _heads(conn, [stream_id for stream_id, _, _ in checked])
        for stream_id, expected_version, _ in checked:
            head = heads.get(stream_id)
            actual_version = 0 if head is None else head[0]
            if actual_version != expected_version:
                raise ConcurrencyConflict(stream_id, expected_version, actual_version)

        stored: list[list[StoredEvent]] = []
        rows: list[dict[str, object]] = []
        new_heads: list[dict[str, object]] = []
        moved_heads: list[tuple[dict[str, object], dict[str, object]]] = []
        for stream_id, expected_version, items in checked:
            head = heads.get(stream_id)
            prev_hash = GENESIS_HASH if head is None else head[1]
            chain: list[StoredEvent] = []
            for version, (kind, payload, payload_text, occurred_at) in enumerate(
                items, expected_version + 1
            ):
                event_hash = chain_hash(prev_hash, stream_id, version, kind, payload, occurred_at)
                # Position 0 until the database assigns the real one below.
                chain.append(
                    StoredEvent(
                        0, stream_id, version, kind, payload, occurred_at, event_hash, prev_hash
                    )
                )
                rows.append(
                    {
                        "stream_id": stream_id,
                        "version": version,
                        "kind": kind,
                        "payload": payload_text,
                        "occurred_at": occurred_at,
                        "hash": event_hash,
                        "prev_hash": prev_hash,
                    }
                )
                prev_hash = event_hash
            stored.append(chain)
            last = chain[-1]
            if head is None:
                new_heads.append(
                    {"stream_id": stream_id, "version": last.version, "head_hash": last.hash}
                )
            else:
                moved_heads.append(
                    (
                        {"stream_id": stream_id, "version": expected_version},
                        {"version": last.version, "head_hash": last.hash},
                    )
                )

        if new_heads:
            insert_rows(conn, streams, new_heads)
        if update_rows(conn, streams, moved_heads) != len(moved_heads):
            # Only a writer ignoring the append lock could get here; find which stream.
            expected = {
                stream_id: version for stream_id, version, _ in checked if stream_id in heads
            }
            for stream_id, (actual, _) in _heads(conn, list(expected)).items():
                if actual != expected[stream_id]:
                    raise ConcurrencyConflict(stream_id, expected[stream_id], actual)
            raise AssertionError("stream heads moved under the append lock")

        positions = iter(insert_rows(conn, events, rows, returning=events.c.position))
        return [[replace(event, position=next(positions)) for event in chain] for chain in stored]

    def versions(self, conn: Connection, stream_ids: Sequence[str]) -> dict[str, int]:
        """Each named stream's version, 0 for one not begun: the ``expected_version`` of an
        append by a writer that holds the append lock and so knows no one moves them."""
        heads = _heads(conn, stream_ids)
        return {
            stream_id: heads[stream_id][0] if stream_id in heads else 0 for stream_id in stream_ids
        }

    def read(self, conn: Connection, stream_id: str, from_version: int = 0) -> list[StoredEvent]:
        """The stream's events with a version above `from_version` (the version already known)."""
        rows = conn.execute(
            select(events)
            .where(events.c.stream_id == stream_id, events.c.version > from_version)
            .order_by(events.c.version)
        )
        return [_stored(row) for row in rows]

    def read_streams(self, conn: Connection, stream_ids: Sequence[str]) -> list[StoredEvent]:
        """Every event of the named streams, stream by stream in version order; the caller
        bounds how many streams it names."""
        rows = conn.execute(
            select(events)
            .where(one_of(conn, events.c.stream_id, stream_ids))
            .order_by(events.c.stream_id, events.c.version)
        )
        return [_stored(row) for row in rows]

    def read_all(self, conn: Connection, after_position: int, limit: int) -> list[StoredEvent]:
        """Up to `limit` events of every stream with a position above `after_position`."""
        if not 1 <= limit <= READ_ALL_LIMIT_MAX:
            raise ValueError(f"limit must be 1 to {READ_ALL_LIMIT_MAX}")
        rows = conn.execute(
            select(events)
            .where(events.c.position > after_position)
            .order_by(events.c.position)
            .limit(limit)
        )
        return [_stored(row) for row in rows]

    def verify(self, conn: Connection) -> AuditResult:
        """Recompute every stream's hash chain and compare it with what is stored.

        Pass a `Database.snapshot()` connection when appends may run concurrently. Events are
        fetched in batches and checked one stream at a time, so memory holds one stream.
        """
        first_bad: ChainBreak | None = None
        stream_count = 0
        event_count = 0
        for stream_id, head_version, head_hash, rows in _streams_with_events(conn):
            stream_count += 1
            event_count += len(rows)
            if first_bad is None:
                first_bad = _check_stream(stream_id, head_version, head_hash, rows)
        orphans = conn.execute(
            select(streams.c.stream_id, streams.c.version)
            .where(~exists().where(events.c.stream_id == streams.c.stream_id))
            .order_by(streams.c.stream_id)
        ).all()
        stream_count += len(orphans)
        if first_bad is None and orphans:
            stream_id, version = orphans[0]
            first_bad = ChainBreak(stream_id, version, "stream head has no events")
        return AuditResult(stream_count, event_count, first_bad)


class KindAt(NamedTuple):
    position: int
    stream_id: str
    kind: str


def last_position(conn: Connection) -> int:
    """The position of the newest event, 0 before the first."""
    return int(conn.execute(select(func.max(events.c.position))).scalar() or 0)


def kinds_after(conn: Connection, after_position: int, kinds: Sequence[str]) -> list[KindAt]:
    """Where events of ``kinds`` with a position above ``after_position`` were booked; a
    watcher that asks again from the last position it saw reads each event once."""
    c = events.c
    rows = conn.execute(
        select(c.position, c.stream_id, c.kind).where(
            c.position > after_position, c.kind.in_(list(kinds))
        )
    )
    return [KindAt(position, stream_id, kind) for position, stream_id, kind in rows]


def _heads(conn: Connection, stream_ids: Sequence[str]) -> dict[str, tuple[int, bytes]]:
    """Each existing stream's version and head hash."""
    found: dict[str, tuple[int, bytes]] = {}
    for start in range(0, len(stream_ids), _STREAMS_PER_QUERY_MAX):
        chunk = stream_ids[start : start + _STREAMS_PER_QUERY_MAX]
        for row in conn.execute(
            select(streams.c.stream_id, streams.c.version, streams.c.head_hash).where(
                one_of(conn, streams.c.stream_id, chunk)
            )
        ):
            found[row.stream_id] = (row.version, bytes(row.head_hash))
    return found


def _checked(event: NewEvent) -> tuple[str, Payload, str, int]:
    """The event's kind, a plain copy of its payload, that payload's canonical text, its time."""
    _check_text("kind", event.kind, KIND_LENGTH_MAX)
    occurred_at = event.occurred_at
    if isinstance(occurred_at, bool) or not isinstance(occurred_at, int):
        raise InvalidEvent("occurred_at must be int unix seconds")
    if not 0 <= occurred_at < _OCCURRED_AT_LIMIT:
        raise InvalidEvent("occurred_at is out of range")
    if not isinstance(event.payload, Mapping):
        raise InvalidEvent("payload must be a JSON object")
    payload = cast(Payload, plain_json(event.payload, "payload", 0))
    payload_text = canonical_json(payload)
    if len(payload_text.encode("utf-8")) > PAYLOAD_BYTES_MAX:
        raise InvalidEvent(f"payload exceeds {PAYLOAD_BYTES_MAX} bytes")
    return event.kind, payload, payload_text, occurred_at


def plain_json(value: object, path: str, depth: int = 0) -> Json:
    """A fresh copy of `value` made of dict, list, str, int and bool, or InvalidEvent.

    The copy is what gets stored and returned, so later changes to the caller's objects
    cannot make a StoredEvent disagree with its row. An error names where it found the bad
    value, a path ``path`` starts.
    """
    return _plain(value, (path,), depth)


def _plain(value: object, trail: tuple[object, ...], depth: int) -> Json:
    # The path is kept as parts and spelled out only for an error: every event and outbox
    # payload passes through here, and most are fine.
    if depth > PAYLOAD_DEPTH_MAX:
        raise InvalidEvent(f"{_path(trail)}: nested deeper than {PAYLOAD_DEPTH_MAX} levels")
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if not -PAYLOAD_INT_MAGNITUDE_LIMIT < value < PAYLOAD_INT_MAGNITUDE_LIMIT:
            raise InvalidEvent(f"{_path(trail)}: integer exceeds a uint256 in magnitude")
        return int(value)
    if isinstance(value, str):
        if not _is_utf8(value):
            raise InvalidEvent(f"{_path(trail)}: string is not valid Unicode text")
        return str(value)
    if isinstance(value, float):
        raise InvalidEvent(f"{_path(trail)}: floats are not allowed; use integer minor units")
    if isinstance(value, list):
        return [_plain(item, (*trail, index), depth + 1) for index, item in enumerate(value)]
    if isinstance(value, Mapping):
        plain: dict[str, Json] = {}
        for key, item in value.items():
            if not isinstance(key, str) or not _is_utf8(key):
                raise InvalidEvent(f"{_path(trail)}: object keys must be strings")
            plain[key] = _plain(item, (*trail, key), depth + 1)
        return plain
    raise InvalidEvent(
        f"{_path(trail)}: {type(value).__name__} is not allowed; use dict, list, str, int or bool"
    )


def _path(trail: tuple[object, ...]) -> str:
    """``payload['legs'][0]``: the root's name, then each key or index in brackets."""
    root, *steps = trail
    return str(root) + "".join(
        f"[{step}]" if isinstance(step, int) else f"[{step!r}]" for step in steps
    )


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates
        return False
    return True


def _check_text(name: str, value: object, length_max: int) -> None:
    if not isinstance(value, str) or not 1 <= len(value) <= length_max:
        raise InvalidEvent(f"{name} must be a string of 1 to {length_max} characters")


def _stored(row: Row[object]) -> StoredEvent:
    return StoredEvent(
        row.position,
        row.stream_id,
        row.version,
        row.kind,
        json.loads(row.payload),
        row.occurred_at,
        bytes(row.hash),
        bytes(row.prev_hash),
    )


def _streams_with_events(
    conn: Connection,
) -> Iterator[tuple[str, int | None, bytes | None, list[Row[object]]]]:
    """Each stream's head and its events in version order, one stream at a time.

    Streams are told apart by equality only, so the database's collation order never has to
    agree with Python's string order.
    """
    query = (
        select(events, streams.c.version.label("head_version"), streams.c.head_hash)
        .select_from(events.outerjoin(streams, streams.c.stream_id == events.c.stream_id))
        .order_by(events.c.stream_id, events.c.version)
        .execution_options(yield_per=_VERIFY_FETCH_ROWS)
    )
    current: list[Row[object]] = []
    for row in conn.execute(query):
        if current and row.stream_id != current[0].stream_id:
            yield _stream_group(current)
            current = []
        current.append(row)
    if current:
        yield _stream_group(current)


def _stream_group(
    rows: list[Row[object]],
) -> tuple[str, int | None, bytes | None, list[Row[object]]]:
    first = rows[0]
    head_hash = None if first.head_hash is None else bytes(first.head_hash)
    return first.stream_id, first.head_version, head_hash, rows


def _check_stream(
    stream_id: str, head_version: int | None, head_hash: bytes | None, rows: list[Row[object]]
) -> ChainBreak | None:
    prev_hash = GENESIS_HASH
    for expected_version, row in enumerate(rows, 1):
        version = row.version
        if version != expected_version:
            return ChainBreak(stream_id, version, f"version gap: expected {expected_version}")
        if bytes(row.prev_hash) != prev_hash:
            return ChainBreak(stream_id, version, "prev_hash does not link to the previous event")
        try:
            payload = json.loads(
                row.payload, parse_float=_reject_number, parse_constant=_reject_number
            )
            canonical = canonical_json(payload)
        except ValueError:
            return ChainBreak(stream_id, version, "payload is not valid JSON without floats")
        if canonical != row.payload:
            return ChainBreak(stream_id, version, "payload is not in canonical form")
        recomputed = chain_hash(prev_hash, stream_id, version, row.kind, payload, row.occurred_at)
        if recomputed != bytes(row.hash):
            return ChainBreak(stream_id, version, "hash does not match the event's content")
        prev_hash = recomputed
    last_version = len(rows)
    if head_version is None:
        return ChainBreak(stream_id, last_version, "events have no stream head")
    if head_version != last_version or head_hash != prev_hash:
        return ChainBreak(
            stream_id, head_version, f"stream head disagrees with its last event {last_version}"
        )
    return None


def _reject_number(text: str) -> float:
    raise ValueError(f"non-integer number {text} in a stored payload")
