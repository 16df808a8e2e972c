"""`settle chain-check`: a small run on its own anvil injects every fault at least once and
still applies every operation exactly once, with the indexer's output equal to the chain's
logs; and the check refuses what it cannot run against before starting anything."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.chain.errors import UnknownNetwork
from engine.chain.networks import ANVIL_CHAIN_ID
from engine.cli.chain_check import cmd_chain_check
from engine.store.db import open_database, upgrade
from engine.store.transactions import TxStore
from engine.tools.chain_check.errors import (
    ChainCheckDatabaseInUse,
    ChainCheckInvalidSize,
    ChainCheckNeedsAnvil,
)
from engine.tools.chain_check.runner import run_chain_check

SMALL_RUN_OPERATIONS = 40
# The fields the issue names, in its order; the faults it names without a field follow.
ISSUE_FIELDS = (
    "sent",
    "applied_once",
    "duplicates",
    "lost",
    "reorgs",
    "dropped",
    "timeouts",
    "indexer_matches_chain",
)
FAULT_FIELDS = ("reorgs", "dropped", "timeouts", "disconnects", "restarts", "interval_blocks")


@pytest.mark.anvil
def test_a_small_run_injects_every_fault_and_applies_each_operation_exactly_once(
    anvil_binary: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    exit_code = cmd_chain_check("anvil", True, SMALL_RUN_OPERATIONS)

    report = json.loads(capsys.readouterr().out)
    assert tuple(report)[: len(ISSUE_FIELDS)] == ISSUE_FIELDS
    assert set(report) == {*ISSUE_FIELDS, *FAULT_FIELDS}
    assert {name: report[name] >= 1 for name in FAULT_FIELDS} == dict.fromkeys(FAULT_FIELDS, True)
    assert report["sent"] == report["applied_once"] == SMALL_RUN_OPERATIONS
    assert (report["duplicates"], report["lost"]) == (0, 0)
    assert report["indexer_matches_chain"] is True
    assert exit_code == 0


@pytest.mark.parametrize("network", ["sepolia", "base-sepolia", "embedded"])
def test_chain_check_refuses_every_network_but_anvil(network: str) -> None:
    with pytest.raises(ChainCheckNeedsAnvil) as raised:
        cmd_chain_check(network, True, SMALL_RUN_OPERATIONS)

    assert raised.value.code == "chain_check_needs_anvil"
    assert network in str(raised.value) and "--network anvil" in str(raised.value)


def test_chain_check_refuses_an_unknown_network_by_name() -> None:
    with pytest.raises(UnknownNetwork):
        cmd_chain_check("mainnet-of-my-dreams", True, SMALL_RUN_OPERATIONS)


@pytest.mark.parametrize("operations", [0, 1, 5_001])
def test_chain_check_refuses_an_operation_count_out_of_range(operations: int) -> None:
    with pytest.raises(ChainCheckInvalidSize) as raised:
        cmd_chain_check("anvil", True, operations)

    assert "--operations" in str(raised.value)


def test_chain_check_refuses_a_database_that_already_holds_anvil_lanes(db_url: str) -> None:
    """A new anvil starts every nonce at zero: a lane kept from an older one would be wrong."""
    upgrade(db_url)
    database = open_database(db_url)
    try:
        with database.transaction() as conn:
            TxStore(ANVIL_CHAIN_ID).add_lane(conn, "0x" + "11" * 20, 7, 1_700_000_000)
    finally:
        database.dispose()

    with pytest.raises(ChainCheckDatabaseInUse) as raised:
        run_chain_check(SMALL_RUN_OPERATIONS, db_url=db_url)

    assert raised.value.code == "chain_check_database_in_use"
