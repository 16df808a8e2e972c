"""Fees, gas estimates and a minimal local signer for the few transactions of a deployment.

Deployment sends a handful of transactions once; the transaction manager (persisted nonces,
replacement, batching) is for the engine's steady flow, not for this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from eth_account.signers.local import LocalAccount
from eth_account.types import TransactionDictType
from eth_tester.exceptions import TransactionFailed as TesterTransactionFailed
from eth_utils import to_checksum_address
from eth_utils.exceptions import ValidationError
from web3 import Web3
from web3.exceptions import ContractLogicError, TimeExhausted, Web3RPCError
from web3.types import TxParams, TxReceipt

from engine.chain.contracts.escrow import GAS_SAFETY_PERCENT
from engine.chain.contracts.reverts import decode_revert, revert_data
from engine.chain.errors import ChainError
from engine.deploy.errors import (
    InsufficientFunds,
    ReceiptTimeout,
    TransactionRejected,
    TransactionReverted,
)
from engine.deploy.ether_units import format_eth

EIP1559_TX_TYPE: Final = 2


@dataclass(frozen=True)
class Fees:
    base_fee_wei: int
    priority_fee_wei: int

    @property
    def max_fee_wei(self) -> int:
        # Twice the base fee survives six full blocks of base-fee increases (12.5% each)
        # before the transaction stops being includable.
        return 2 * self.base_fee_wei + self.priority_fee_wei

    @property
    def expected_wei_per_gas(self) -> int:
        return self.base_fee_wei + self.priority_fee_wei


def current_fees(w3: Web3) -> Fees:
    base_fee = w3.eth.get_block("latest").get("baseFeePerGas")
    assert base_fee is not None, "the chain has no EIP-1559 base fee"
    return Fees(int(base_fee), int(w3.eth.max_priority_fee))


def gas_limit(estimate: int) -> int:
    return estimate * GAS_SAFETY_PERCENT // 100


def estimate_gas(w3: Web3, sender: str, to: str | None, data: bytes, what: str) -> int:
    """The simulated gas of a transaction; a revert raises TransactionReverted by name."""
    params: TxParams = {"from": to_checksum_address(sender), "data": data}
    if to is not None:
        params["to"] = to_checksum_address(to)
    try:
        return int(w3.eth.estimate_gas(params))
    except (ContractLogicError, TesterTransactionFailed) as error:
        data_ = revert_data(error)
        reason = str(decode_revert(data_)) if data_ else "reverted without a reason"
        raise TransactionReverted(f"{what} would revert: {reason}") from None
    except (Web3RPCError, ValidationError) as error:
        raise _refusal(error, sender, what) from None


class Sender:
    """Signs locally and sends one transaction at a time, waiting for each to be mined."""

    def __init__(
        self, w3: Web3, account: LocalAccount, fees: Fees, receipt_timeout_s: float
    ) -> None:
        self.w3 = w3
        self.account = account
        self.fees = fees
        self.receipt_timeout_s = receipt_timeout_s
        self.chain_id = w3.eth.chain_id
        self._nonce = int(w3.eth.get_transaction_count(account.address, "pending"))

    def send(self, to: str, data: bytes, gas: int, what: str, value_wei: int = 0) -> TxReceipt:
        """Sends with `gas` as the limit; returns the receipt of a successful transaction."""
        address = self.account.address
        needed = gas * self.fees.max_fee_wei + value_wei
        balance = self.w3.eth.get_balance(address)
        if balance < needed:
            raise InsufficientFunds(funds_message(address, needed, balance, what))
        tx: TransactionDictType = {
            "type": EIP1559_TX_TYPE,
            "chainId": self.chain_id,
            "nonce": self._nonce,
            "to": to_checksum_address(to),
            "value": value_wei,
            "data": data,
            "gas": gas,
            "maxFeePerGas": self.fees.max_fee_wei,
            "maxPriorityFeePerGas": self.fees.priority_fee_wei,
        }
        signed = self.account.sign_transaction(tx)
        try:
            tx_hash = self.w3.eth.send_raw_transaction(signed.raw_transaction)
        except (Web3RPCError, ValidationError) as error:
            raise _refusal(error, address, what) from None
        self._nonce += 1
        try:
            receipt = self.w3.eth.wait_for_transaction_receipt(
                tx_hash, timeout=self.receipt_timeout_s
            )
        except TimeExhausted:
            raise ReceiptTimeout(
                f"{what}: transaction {tx_hash.to_0x_hex()} was sent but not mined within "
                f"{self.receipt_timeout_s:g} s; re-run once it is mined or dropped: a "
                "deployment that landed is found at its address, not repeated"
            ) from None
        if receipt["status"] != 1:
            raise TransactionReverted(
                f"{what}: transaction {tx_hash.to_0x_hex()} reverted in block "
                f"{receipt['blockNumber']}"
            )
        return receipt


def funds_message(address: str, needed_wei: int, balance_wei: int, what: str) -> str:
    """Why `address` cannot pay for `what`: the same words before the first transaction
    (the plan's worst case) and before each one."""
    return (
        f"{what}: account {address} holds {format_eth(balance_wei)} but needs up to "
        f"{format_eth(needed_wei)} for gas at current fees; fund it and re-run"
    )


def _refusal(error: Exception, address: str, what: str) -> ChainError:
    message = str(getattr(error, "message", None) or error)
    lowered = message.lower()
    if "insufficient funds" in lowered or "cannot afford" in lowered:
        return InsufficientFunds(f"{what}: account {address} cannot pay for the gas; fund it")
    return TransactionRejected(f"{what}: the node refused the transaction: {message}")
