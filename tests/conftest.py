"""Fixtures for the whole suite: chain backends (both EVMs) and databases (SQLite, PostgreSQL)."""

pytest_plugins = ["tests.chain.conftest_backends", "tests.store.db_fixtures"]
