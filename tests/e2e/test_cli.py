"""The `settle` command as a user runs it: a real process, its output, its exit code."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SETTLE = Path(sys.executable).with_name("settle")


def settle(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SETTLE), *args], capture_output=True, text=True, timeout=600, check=False
    )


def test_walkthrough_json_walks_one_payment_and_conserves_money() -> None:
    result = settle("walkthrough", "--json")
    assert result.returncode == 0, result.stderr
    steps = json.loads(result.stdout)["steps"]
    assert [s["step"].split()[0] for s in steps] == ["authorize", "capture", "capture", "refund"]
    for step in steps:
        assert sum(step["balances"].values()) == 0  # money only moves between the parties
        assert step["gas_used"] > 21_000
    final = steps[-1]
    assert final["payment"] == {"capturable": 0, "refundable": 80_000_000, "seq": 4}
    assert final["balances"]["fee_receiver"] == 1_000_000  # 1% of 100, in two captures


def test_walkthrough_prints_readable_steps() -> None:
    result = settle("walkthrough")
    assert result.returncode == 0, result.stderr
    assert "capture 30.000000 (partial, 1% fee)" in result.stdout
    assert "merchant" in result.stdout


@pytest.mark.anvil
def test_gas_report_json_has_every_operation_and_batch_size() -> None:
    result = settle("gas-report", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert set(report["operations"]) == {
        "authorize_allowance",
        "authorize_permit",
        "authorize_erc3009",
        "charge",
        "capture_full",
        "capture_partial",
        "void",
        "reclaim",
        "refund",
    }
    assert set(report["batch_capture_per_payment"]) == {"1", "10", "100", "100_netted_5_merchants"}
    batches = report["batch_capture_per_payment"]
    # Batching amortises the transaction's base cost: per payment it must fall with size.
    assert batches["1"] > batches["10"] > batches["100"]
    assert all(isinstance(v, int) and v > 0 for v in report["operations"].values())


def test_unknown_command_fails_with_usage() -> None:
    result = settle("no-such-command")
    assert result.returncode == 2
