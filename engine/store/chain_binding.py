"""The one row that says which chain and escrow a database belongs to (its checks against the
chain are engine/chain/binding.py's).

The row is written once and never changed or deleted: a database never moves between chains,
since its payments exist on one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from sqlalchemy import insert, select
from sqlalchemy.exc import IntegrityError

from engine.store.db import Database
from engine.store.schema import chain_binding

_BINDING_ROW_ID: Final = 1


@dataclass(frozen=True)
class ChainBinding:
    chain_id: int
    genesis_hash: bytes
    escrow_address: str
    created_at: int  # unix seconds

    def describe(self) -> str:
        return (
            f"chain id {self.chain_id} (genesis 0x{self.genesis_hash.hex()[:12]}…), "
            f"escrow {self.escrow_address}"
        )


def read_binding(db: Database) -> ChainBinding | None:
    with db.snapshot() as conn:
        row = conn.execute(select(chain_binding)).one_or_none()
    if row is None:
        return None
    return ChainBinding(
        chain_id=row.chain_id,
        genesis_hash=bytes(row.genesis_hash),
        escrow_address=row.escrow_address,
        created_at=row.created_at,
    )


def bind_once(db: Database, wanted: ChainBinding) -> ChainBinding:
    """Stores `wanted` if the database is bound to nothing yet; the binding the database has
    afterwards, `wanted` or whatever was there first (another process may have bound it
    between our read and our insert)."""
    try:
        with db.transaction() as conn:
            if conn.execute(select(chain_binding.c.id)).first() is None:
                conn.execute(
                    insert(chain_binding).values(
                        id=_BINDING_ROW_ID,
                        chain_id=wanted.chain_id,
                        genesis_hash=wanted.genesis_hash,
                        escrow_address=wanted.escrow_address,
                        created_at=wanted.created_at,
                    )
                )
                return wanted
    except IntegrityError:
        pass  # another process bound it first: theirs is the binding
    existing = read_binding(db)
    assert existing is not None, "the binding row is never deleted"
    return existing
