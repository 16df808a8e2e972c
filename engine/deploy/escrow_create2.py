"""Where SettlementEscrow lands: CREATE2 through the standard deployment proxy
(engine.deploy.create2) with a fixed salt, and an initcode that holds the admin (the deployer).

So the address depends only on the code and the admin: the same on every chain, known before
anything is sent, and re-running finds the escrow already there instead of deploying a second
one. Anyone may send the same initcode to the proxy; that only ever yields this same contract
with this same admin.
"""

from __future__ import annotations

from typing import Final

from eth_abi import encode
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address

from engine.chain.contracts.compiler import load_artifact
from engine.chain.contracts.escrow import ESCROW_NAME
from engine.deploy.create2 import create2_address

# Fixed, so the address depends on nothing but the initcode (code + admin). Changing it moves
# every future deployment to a new address.
ESCROW_SALT: Final = keccak(text="settle.SettlementEscrow")


def escrow_address(admin: str) -> ChecksumAddress:
    """Where SettlementEscrow administered by `admin` lives, on every chain."""
    return create2_address(ESCROW_SALT, escrow_initcode(admin))


def escrow_initcode(admin: str) -> bytes:
    """Creation code plus constructor(admin): what the CREATE2 address commits to."""
    artifact = load_artifact(ESCROW_NAME)
    return bytes.fromhex(artifact.bytecode[2:]) + constructor_arguments(admin)


def constructor_arguments(admin: str) -> bytes:
    """The ABI-encoded constructor(admin), as explorers ask for it when verifying."""
    return encode(["address"], [to_checksum_address(admin)])
