"""Fixtures for the whole suite, from tests/fixtures/: chain backends (both EVMs), databases
(SQLite, PostgreSQL), local escrow deployments and settlement engines."""

pytest_plugins = [
    "tests.fixtures.chains",
    "tests.fixtures.databases",
    "tests.fixtures.deployments",
    "tests.fixtures.engines",
    "tests.fixtures.solvency",
]
