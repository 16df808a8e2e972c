"""The standard deterministic deployment proxy, which gives a contract the same address on
every chain: keccak256(0xff ++ proxy ++ salt ++ keccak256(initcode))[12:].

The proxy itself got the same address everywhere by being deployed with one presigned,
pre-EIP-155 transaction (no chain id in the signature, so every chain accepts it) from a
one-time address whose key nobody knows (its signature is r = s = 0x22…22; the address is
recovered from it). That transaction, at nonce 0 of that address, is the only way to put the
proxy's code there, so on a chain where the proxy is missing we fund the one-time address and
replay the transaction. Anvil and the public testnets have the proxy already; eth-tester does
not.

Calling the proxy: calldata is salt (32 bytes) ++ initcode; it CREATE2s the contract and
returns its 20-byte address, or reverts without data if the creation fails (the initcode
reverted, or code already exists at the address).
"""

from __future__ import annotations

from collections.abc import Callable
from enum import StrEnum
from typing import Final

from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from eth_utils.exceptions import ValidationError
from web3 import Web3
from web3.exceptions import Web3RPCError

from engine.chain.errors import ChainError

PROXY_ADDRESS: Final = to_checksum_address("0x4e59b44847b379578588920ca78fbf26c0b4956c")
PROXY_RUNTIME_CODE: Final = bytes.fromhex(
    "7fffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffe03601600081602082378035"
    "828234f58015156039578182fd5b8082525050506014600cf3"
)
PROXY_DEPLOYER: Final = to_checksum_address("0x3fab184622dc19b6109349b94811493bf2a45362")
PROXY_DEPLOYMENT_GAS_PRICE_WEI: Final = 100 * 10**9
PROXY_DEPLOYMENT_GAS_LIMIT: Final = 100_000
# What the one-time deployer must hold for its transaction to be valid.
PROXY_DEPLOYMENT_COST_WEI: Final = PROXY_DEPLOYMENT_GAS_PRICE_WEI * PROXY_DEPLOYMENT_GAS_LIMIT
# nonce 0, gas price 100 gwei, gas limit 100000, no `to` (a creation), value 0, the proxy's
# initcode, v = 27, r = s = 0x2222…22.
PROXY_DEPLOYMENT_TX: Final = bytes.fromhex(
    "f8a58085174876e800830186a08080b853604580600e600039806000f350fe7fffffffffffffffffffffffffff"
    "ffffffffffffffffffffffffffffffffffffe03601600081602082378035828234f58015156039578182fd5b80"
    "82525050506014600cf31ba02222222222222222222222222222222222222222222222222222222222222222a0"
    "2222222222222222222222222222222222222222222222222222222222222222"
)
SALT_BYTES: Final = 32
_ADDRESS_BYTES: Final = 20


class ProxyState(StrEnum):
    INSTALLED = "installed"
    # Missing, and installable: the one-time deployer has not used its nonce 0 here.
    MISSING = "missing"
    # Something else holds the address, or nonce 0 is spent: CREATE2 through it is impossible.
    UNAVAILABLE = "unavailable"


class Create2ProxyUnavailable(ChainError):
    code = "create2_proxy_unavailable"


def create2_address(salt: bytes, initcode: bytes) -> ChecksumAddress:
    """Where the proxy puts `initcode` deployed with `salt`, on any chain."""
    assert len(salt) == SALT_BYTES, salt
    digest = keccak(b"\xff" + bytes.fromhex(PROXY_ADDRESS[2:]) + salt + keccak(initcode))
    return to_checksum_address(digest[-_ADDRESS_BYTES:])


def proxy_calldata(salt: bytes, initcode: bytes) -> bytes:
    assert len(salt) == SALT_BYTES, salt
    return salt + initcode


def proxy_state(w3: Web3) -> ProxyState:
    code = bytes(w3.eth.get_code(PROXY_ADDRESS))
    if code == PROXY_RUNTIME_CODE:
        return ProxyState.INSTALLED
    if not code and w3.eth.get_transaction_count(PROXY_DEPLOYER) == 0:
        return ProxyState.MISSING
    return ProxyState.UNAVAILABLE


def usable_proxy_state(w3: Web3) -> ProxyState:
    """INSTALLED or MISSING; Create2ProxyUnavailable, saying why, when neither."""
    state = proxy_state(w3)
    if state is ProxyState.UNAVAILABLE:
        raise Create2ProxyUnavailable(_unavailable_reason(w3))
    return state


def install_proxy(w3: Web3, fund: Callable[[ChecksumAddress, int], object]) -> bytes:
    """Puts the proxy on a chain that lacks it; returns the hash of the transaction that did.

    `fund(address, wei)` must pay `wei` to `address` and return once that is mined; it is
    called only if the one-time deployer holds less than its transaction costs.
    """
    state = usable_proxy_state(w3)
    assert state is ProxyState.MISSING, "the proxy is already installed"
    shortfall = PROXY_DEPLOYMENT_COST_WEI - w3.eth.get_balance(PROXY_DEPLOYER)
    if shortfall > 0:
        fund(PROXY_DEPLOYER, shortfall)
    try:
        tx_hash = w3.eth.send_raw_transaction(PROXY_DEPLOYMENT_TX)
    except (Web3RPCError, ValidationError) as error:
        # Nodes that accept only replay-protected (EIP-155) transactions end up here.
        raise Create2ProxyUnavailable(
            f"the node refused the proxy's presigned deployment transaction: {error}"
        ) from None
    receipt = w3.eth.wait_for_transaction_receipt(tx_hash)
    if receipt["status"] != 1 or bytes(w3.eth.get_code(PROXY_ADDRESS)) != PROXY_RUNTIME_CODE:
        raise Create2ProxyUnavailable(
            f"the proxy's deployment transaction {tx_hash.to_0x_hex()} did not install it"
        )
    return bytes(tx_hash)


def _unavailable_reason(w3: Web3) -> str:
    if w3.eth.get_code(PROXY_ADDRESS):
        return (
            f"{PROXY_ADDRESS} holds other code than the deterministic deployment proxy; "
            "deterministic addresses are impossible on this chain"
        )
    return (
        f"the deterministic deployment proxy is missing and its one-time deployer "
        f"{PROXY_DEPLOYER} has already spent nonce 0 here, so it can never be installed"
    )
