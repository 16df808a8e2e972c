"""Reading deployments/<chain-id>.json: a record for another chain, or a file that is not a
record, is refused with a typed error rather than settled through."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from engine.chain.deployment import load_deployment
from engine.chain.errors import DeploymentRecordInvalid

ESCROW = "0x" + "11" * 20
OPERATOR = "0x" + "22" * 20


def write(path: Path, record: object) -> None:
    path.write_text(json.dumps(record), encoding="utf-8")


def test_a_record_reads_as_the_escrow_and_its_confirmed_role_holders(tmp_path: Path) -> None:
    write(
        tmp_path / "31337.json",
        {
            "chain_id": 31337,
            "network": "anvil",
            "escrow": {"address": ESCROW},
            "roles": {"OPERATOR_ROLE": [{"account": OPERATOR}], "ARBITER_ROLE": []},
        },
    )

    deployment = load_deployment(31337, tmp_path)

    assert deployment.escrow.lower() == ESCROW
    assert [account.lower() for account in deployment.operators] == [OPERATOR]
    assert deployment.arbiters == deployment.pausers == ()


def test_a_record_of_another_chain_is_refused(tmp_path: Path) -> None:
    write(
        tmp_path / "31337.json",
        {"chain_id": 1, "network": "anvil", "escrow": {"address": ESCROW}, "roles": {}},
    )

    with pytest.raises(DeploymentRecordInvalid, match="chain id 1, not 31337"):
        load_deployment(31337, tmp_path)


@pytest.mark.parametrize("content", ["not json", "[]", '{"escrow": {}}'])
def test_a_file_that_is_not_a_record_is_refused(tmp_path: Path, content: str) -> None:
    (tmp_path / "31337.json").write_text(content, encoding="utf-8")

    with pytest.raises(DeploymentRecordInvalid, match="is not a deployment record"):
        load_deployment(31337, tmp_path)
