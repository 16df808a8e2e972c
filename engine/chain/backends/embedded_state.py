"""Durable state for the embedded EVM: py-evm's key-value store, written through to SQLite.

py-evm keeps every trie node and block in one key-value store. Holding it in a dict (eth-tester's
default) loses the chain when the process ends; writing each atomic batch through to a SQLite
file beside the engine's database lets a restarted engine find its escrow and payments again.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

from eth.abc import AtomicWriteBatchAPI
from eth.db.atomic import AtomicDB
from eth.db.backends.base import BaseDB
from sqlalchemy.engine import make_url

STATE_SUFFIX: Final = ".evm.sqlite"
DEFAULT_STATE_PATH: Final = Path("var/embedded-evm.sqlite")


class WriteThroughKV(BaseDB):
    """A dict that also records writes, flushed to SQLite in one transaction per batch."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute("CREATE TABLE IF NOT EXISTS kv (k BLOB PRIMARY KEY, v BLOB NOT NULL)")
        self._kv: dict[bytes, bytes] = dict(self._conn.execute("SELECT k, v FROM kv"))
        self._written: dict[bytes, bytes | None] = {}

    def __getitem__(self, key: bytes) -> bytes:
        return self._kv[key]

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self._kv[key] = value
        self._written[key] = value

    def __delitem__(self, key: bytes) -> None:
        del self._kv[key]
        self._written[key] = None

    def _exists(self, key: bytes) -> bool:
        return key in self._kv

    def __len__(self) -> int:
        return len(self._kv)

    def flush(self) -> None:
        """Makes every write since the last flush durable, all or nothing."""
        if not self._written:
            return
        with self._transaction():
            self._conn.executemany(
                "INSERT OR REPLACE INTO kv (k, v) VALUES (?, ?)",
                [(k, v) for k, v in self._written.items() if v is not None],
            )
            self._conn.executemany(
                "DELETE FROM kv WHERE k = ?", [(k,) for k, v in self._written.items() if v is None]
            )
        self._written.clear()

    @contextmanager
    def _transaction(self) -> Iterator[None]:
        self._conn.execute("BEGIN")
        try:
            yield
        except BaseException:
            self._conn.execute("ROLLBACK")
            raise
        self._conn.execute("COMMIT")

    def close(self) -> None:
        self.flush()
        self._conn.close()


class DurableAtomicDB(AtomicDB):
    """py-evm's atomic store whose every committed batch is flushed to disk."""

    def __init__(self, kv: WriteThroughKV) -> None:
        super().__init__(kv)
        self.kv = kv

    @contextmanager
    def atomic_batch(self) -> Iterator[AtomicWriteBatchAPI]:
        with super().atomic_batch() as batch:
            yield batch
        self.kv.flush()


def state_path_for(database_url: str) -> Path:
    """Where the embedded chain lives for an engine database: beside a SQLite file, else var/."""
    url = make_url(database_url)
    if url.drivername.startswith("sqlite") and url.database not in (None, "", ":memory:"):
        database = Path(str(url.database))
        return database.with_name(database.name + STATE_SUFFIX)
    return DEFAULT_STATE_PATH
