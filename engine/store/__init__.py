"""Durable state of the engine in SQL: SQLite embedded, PostgreSQL for several workers.

`db` opens and migrates the database, `schema` defines its tables, `event_store` keeps the
append-only, hash-chained event log that projections and the ledger are rebuilt from.
"""
