"""Reading deployments/<chain-id>.json: which escrow the engine settles through on a chain, and
who holds its roles.

`settle deploy` (engine.deploy) writes the record once the code at the address was checked;
the engine only reads it, so it lives here, where the pipeline may import it. An engine is
never built by deploying: a chain with no record is refused with the command that makes one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from eth_typing import ChecksumAddress
from eth_utils import to_checksum_address

from engine.chain.contracts.escrow import ROLES
from engine.chain.errors import DeploymentMissing, DeploymentRecordInvalid

DEFAULT_DEPLOYMENTS_DIR: Final = Path("deployments")
# A record is a few kilobytes, a few dozen with the history of earlier escrows it keeps.
RECORD_SIZE_MAX_BYTES: Final = 1024 * 1024
OPERATOR_ROLE, ARBITER_ROLE, PAUSER_ROLE = ROLES


@dataclass(frozen=True)
class Deployment:
    """An escrow on one chain and its role holders, as the record states them.

    Picklable, so a worker process can be handed the deployment its parent settles through.
    """

    chain_id: int
    network: str
    escrow: ChecksumAddress
    operators: tuple[ChecksumAddress, ...]
    arbiters: tuple[ChecksumAddress, ...]
    pausers: tuple[ChecksumAddress, ...]


def record_path(deployments_dir: Path, chain_id: int) -> Path:
    return deployments_dir / f"{chain_id}.json"


def read_record(path: Path) -> dict[str, Any] | None:
    """The record at `path` as written, None if there is none; refuses a file that is not a
    record rather than let a deployment overwrite what someone put there."""
    try:
        with path.open("rb") as file:
            raw = file.read(RECORD_SIZE_MAX_BYTES + 1)
    except FileNotFoundError:
        return None
    record = _parsed(raw) if len(raw) <= RECORD_SIZE_MAX_BYTES else None
    escrow = record.get("escrow") if record is not None else None
    if not isinstance(escrow, dict) or not isinstance(escrow.get("address"), str):
        raise DeploymentRecordInvalid(f"{path} is not a deployment record; move it away and re-run")
    return record


def load_deployment(chain_id: int, deployments_dir: Path = DEFAULT_DEPLOYMENTS_DIR) -> Deployment:
    """The escrow recorded for `chain_id` in `deployments_dir`; DeploymentMissing if there is
    no record, DeploymentRecordInvalid if it cannot be used."""
    path = record_path(deployments_dir, chain_id)
    record = read_record(path)
    if record is None:
        raise DeploymentMissing(
            f"no deployment record {path} for chain id {chain_id}: deploy the escrow first "
            "(`settle deploy --network NAME`), or point to the directory that holds the record"
        )
    if record.get("chain_id") != chain_id:
        raise DeploymentRecordInvalid(
            f"{path} records chain id {record.get('chain_id')!r}, not {chain_id}; "
            "move it away and run `settle deploy --network NAME` again"
        )
    roles = record.get("roles")
    network = record.get("network")
    if not isinstance(roles, dict) or not isinstance(network, str):
        raise DeploymentRecordInvalid(f"{path} has no network or roles; re-run `settle deploy`")
    try:
        return Deployment(
            chain_id=chain_id,
            network=network,
            escrow=to_checksum_address(record["escrow"]["address"]),
            operators=_holders(roles, OPERATOR_ROLE),
            arbiters=_holders(roles, ARBITER_ROLE),
            pausers=_holders(roles, PAUSER_ROLE),
        )
    except (KeyError, TypeError, ValueError):
        raise DeploymentRecordInvalid(
            f"{path} holds an address that is not one; re-run `settle deploy`"
        ) from None


def _parsed(raw: bytes) -> dict[str, Any] | None:
    """The JSON object in `raw`; None for anything else."""
    try:
        parsed = json.loads(raw)
    except ValueError:
        return None
    return parsed if isinstance(parsed, dict) else None


def _holders(roles: dict[str, Any], role: str) -> tuple[ChecksumAddress, ...]:
    """The accounts whose grant of `role` the record confirms (a grant whose receipt never came
    back is not listed)."""
    return tuple(to_checksum_address(entry["account"]) for entry in roles.get(role, []))
