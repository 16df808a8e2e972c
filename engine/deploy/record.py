"""deployments/<chain-id>.json: what is on chain and how it got there, written only after the
code at the address was checked and holding only what receipts confirmed.

A record of an earlier escrow on the same chain (another admin, so another address) is kept
under "previous" rather than overwritten.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

from eth_utils import keccak

from engine.chain.contracts.escrow import ESCROW_NAME

# The engine reads records too (engine.chain.deployment): one reader serves both, and the
# deployment finds it here beside the writer.
from engine.chain.deployment import DEFAULT_DEPLOYMENTS_DIR as DEFAULT_DEPLOYMENTS_DIR
from engine.chain.deployment import read_record as read_record
from engine.chain.rpc import hex_data
from engine.deploy.create2 import PROXY_ADDRESS
from engine.deploy.escrow_create2 import ESCROW_SALT, constructor_arguments
from engine.deploy.plan import DeploymentPlan, Grant
from engine.deploy.source_verification import verification_fields

# The JSON record's format; bump on incompatible changes.
RECORD_VERSION: Final = 1


def build_record(
    plan: DeploymentPlan,
    previous: Mapping[str, Any] | None,
    same_escrow: bool,
    escrow_tx: Mapping[str, Any],
    code_hash: bytes,
    proxy_tx: str | None,
    granted: Mapping[Grant, Mapping[str, Any]],
) -> dict[str, Any]:
    """The record after carrying out `plan`: `granted` holds the grants whose receipts came
    back, `previous` the record found before (if any), for what this run did not redo."""
    pending = set(plan.grants)
    earlier_record = previous if previous is not None and same_escrow else {}
    earlier = earlier_record.get("roles", {})
    proxy_tx = proxy_tx or earlier_record.get("create2_proxy", {}).get("installed_by_tx")
    roles: dict[str, list[dict[str, Any]]] = {}
    for role, accounts in plan.roles.items():
        known = {entry["account"]: entry for entry in earlier.get(role, [])}
        roles[role] = []
        for account in accounts:
            grant = Grant(role, account)
            if grant in granted:
                tx = granted[grant]
            elif grant in pending:
                continue  # its grant was not confirmed: not claimed
            else:
                tx = _tx_of(known.get(account))  # held it before this run
            roles[role].append({"account": account, **tx})
    record: dict[str, Any] = {
        "version": RECORD_VERSION,
        "network": plan.network.name,
        "chain_id": plan.chain_id,
        "escrow": {
            "contract": ESCROW_NAME,
            "address": plan.escrow,
            "admin": plan.deployer,
            "deployer": plan.deployer,
            "salt": hex_data(ESCROW_SALT),
            "constructor_arguments": hex_data(constructor_arguments(plan.deployer)),
            "initcode_keccak": hex_data(keccak(plan.initcode)),
            "code_keccak": hex_data(code_hash),
            **escrow_tx,
        },
        "create2_proxy": {"address": PROXY_ADDRESS, "installed_by_tx": proxy_tx},
        "roles": roles,
        **verification_fields(plan.standard_input),
        "standard_input": f"{plan.chain_id}.standard-input.json",
    }
    if previous is not None and not same_escrow:
        older = list(previous.get("previous", []))
        record["previous"] = [{k: v for k, v in previous.items() if k != "previous"}, *older]
    elif previous is not None and "previous" in previous:
        record["previous"] = previous["previous"]
    return record


def write_json(path: Path, data: Mapping[str, Any]) -> None:
    """Replaces the file whole: a reader sees the old record or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.partial")
    partial.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(partial, path)


def _tx_of(entry: Mapping[str, Any] | None) -> dict[str, Any]:
    entry = entry or {}
    return {"tx_hash": entry.get("tx_hash"), "block_number": entry.get("block_number")}
