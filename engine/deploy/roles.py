"""Who gets which of the escrow's roles at deployment, and the calldata that grants one.

Holders come from SETTLE_OPERATORS, SETTLE_ARBITERS and SETTLE_PAUSERS; a role nobody is
named for goes to the deployer, so a fresh deployment is usable at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Final

from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from web3.contract import Contract

from engine.chain.contracts.escrow import ROLES
from engine.deploy.errors import RoleHolderInvalid

ROLE_ENV_VARS: Final = {
    "OPERATOR_ROLE": "SETTLE_OPERATORS",
    "ARBITER_ROLE": "SETTLE_ARBITERS",
    "PAUSER_ROLE": "SETTLE_PAUSERS",
}
ROLE_HOLDERS_MAX: Final = 20


def roles_from_env(environ: Mapping[str, str] = os.environ) -> dict[str, tuple[str, ...]]:
    """Role holders from SETTLE_OPERATORS, SETTLE_ARBITERS, SETTLE_PAUSERS (comma-separated
    addresses); a role whose variable is unset goes to the deployer."""
    roles = {}
    for role, variable in ROLE_ENV_VARS.items():
        value = environ.get(variable, "").strip()
        if value:
            roles[role] = tuple(part.strip() for part in value.split(",") if part.strip())
    return roles


def role_holders(
    roles: Mapping[str, Sequence[str]], deployer: ChecksumAddress
) -> dict[str, tuple[ChecksumAddress, ...]]:
    """Every role's holders, checked and checksummed; the deployer where none are given."""
    unknown = sorted(set(roles) - set(ROLES))
    if unknown:
        raise RoleHolderInvalid(f"unknown roles {unknown}; the escrow's roles are {list(ROLES)}")
    holders = {}
    for role in ROLES:
        accounts = roles.get(role) or (deployer,)
        if len(accounts) > ROLE_HOLDERS_MAX:
            raise RoleHolderInvalid(f"more than {ROLE_HOLDERS_MAX} holders for {role}")
        try:
            holders[role] = tuple(dict.fromkeys(to_checksum_address(a) for a in accounts))
        except ValueError:
            raise RoleHolderInvalid(f"a holder of {role} is not an address: {accounts}") from None
    return holders


def role_id(role: str) -> bytes:
    """The contract's role constants are keccak256 of their names."""
    return keccak(text=role)


def grant_calldata(contract: Contract, role: str, account: str) -> bytes:
    return bytes.fromhex(contract.encode_abi("grantRole", args=[role_id(role), account])[2:])
