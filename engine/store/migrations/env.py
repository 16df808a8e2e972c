"""Alembic environment, run by `engine.store.db.upgrade` with an open connection.

There is no alembic.ini: `upgrade` builds the configuration in code and hands over a
connection already inside its transaction, so migrations run on the same SQLite pragmas,
PostgreSQL search_path and locks as the engine itself.
"""

from alembic import context

from engine.store.schema import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations through engine.store.db.upgrade(url)")

context.configure(
    connection=connection,
    target_metadata=metadata,
    compare_type=True,
    # SQLite cannot ALTER most things; batch mode rebuilds the table instead.
    render_as_batch=connection.dialect.name == "sqlite",
)
with context.begin_transaction():
    context.run_migrations()
