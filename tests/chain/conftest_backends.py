"""Pytest plugin: the `chain` fixture runs a test once per EVM backend, plus the --soak switch.

Loaded from tests/conftest.py with ``pytest_plugins = ["tests.chain.conftest_backends"]``.

* ``chain`` (function scope) is the backend with a snapshot taken before the test and reverted
  after it, so each test starts from the state ``chain_session`` had (including anything a
  session-scoped fixture deployed on it), for about 0.5 ms (embedded) or 2 ms (anvil) per test.
* ``chain_session`` (session scope) is parametrized ``embedded`` / ``anvil``; session
  fixtures that deploy contracts depend on it. The anvil param carries the ``anvil`` marker.
* ``anvil_process``: one anvil per session, i.e. per xdist worker. Missing binary: the anvil
  tests skip, unless REQUIRE_ANVIL is set (CI), where they fail.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from engine.chain.anvil import AnvilProcess, resolve_anvil_binary
from engine.chain.backend_errors import AnvilNotFound
from engine.chain.backends import AnvilBackend, ChainBackend, EmbeddedBackend


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--soak",
        action="store_true",
        default=False,
        help="also run tests marked slow (long soak runs)",
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--soak"):
        return
    skip_slow = pytest.mark.skip(reason="slow soak test: run with --soak")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip_slow)


def anvil_required() -> bool:
    return os.environ.get("REQUIRE_ANVIL", "") not in ("", "0")


@pytest.fixture(scope="session")
def anvil_binary() -> Path:
    try:
        return resolve_anvil_binary()
    except AnvilNotFound as exc:
        if anvil_required():
            pytest.fail(f"REQUIRE_ANVIL is set: {exc}")
        pytest.skip(f"anvil binary missing (set REQUIRE_ANVIL=1 to fail instead): {exc}")


@pytest.fixture(scope="session")
def anvil_process(anvil_binary: Path) -> Iterator[AnvilProcess]:
    with AnvilProcess(binary=anvil_binary) as process:
        yield process


@pytest.fixture(
    scope="session",
    params=["embedded", pytest.param("anvil", marks=pytest.mark.anvil)],
)
def chain_session(request: pytest.FixtureRequest) -> Iterator[ChainBackend]:
    backend: ChainBackend
    if request.param == "embedded":
        backend = EmbeddedBackend()
    else:
        backend = AnvilBackend(request.getfixturevalue("anvil_process"))
    with backend:
        yield backend


@pytest.fixture
def chain(chain_session: ChainBackend) -> Iterator[ChainBackend]:
    token = chain_session.snapshot()
    yield chain_session
    chain_session.revert(token)
