"""Chain backends behave alike: tests that take `chain` run on the embedded EVM and on anvil."""

from __future__ import annotations

import errno
import socket
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from eth_account.types import TransactionDictType
from web3 import HTTPProvider, Web3
from web3.types import TxReceipt

from engine.chain.backends import AnvilBackend, ChainBackend, RpcBackend
from engine.chain.backends.anvil import (
    AnvilConfig,
    AnvilProcess,
    process_exists,
    resolve_anvil_binary,
)
from engine.chain.errors import (
    AnvilNotFound,
    AnvilStartFailed,
    ChainIdMismatch,
    SnapshotNotFound,
    TimestampNotIncreasing,
    UnknownNetwork,
    UnsupportedOnBackend,
)
from engine.chain.networks import NETWORKS, get_network

RECIPIENT = Web3.to_checksum_address("0x" + "ab" * 20)
DAY_S = 86_400


def send_value(chain: ChainBackend, sender: LocalAccount, value_wei: int) -> TxReceipt:
    """A plain EIP-1559 transfer, signed locally as the engine's tx manager signs."""
    w3 = chain.w3
    base_fee = w3.eth.get_block("latest")["baseFeePerGas"]
    tip = w3.eth.max_priority_fee
    tx: TransactionDictType = {
        "type": 2,
        "chainId": chain.chain_id,
        "nonce": w3.eth.get_transaction_count(sender.address),
        "to": RECIPIENT,
        "value": value_wei,
        "gas": 21_000,
        "maxPriorityFeePerGas": tip,
        "maxFeePerGas": 2 * base_fee + tip,
    }
    signed = sender.sign_transaction(tx)
    tx_hash = w3.eth.send_raw_transaction(signed.raw_transaction)
    return w3.eth.wait_for_transaction_receipt(tx_hash, timeout=30)


def block_timestamp(chain: ChainBackend, number: int) -> int:
    return int(chain.w3.eth.get_block(number)["timestamp"])


def port_is_free(port: int) -> bool:
    # SO_REUSEADDR as servers bind: only a socket still listening on the port makes it busy,
    # not connections lingering in TIME_WAIT.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


# --- every backend -----------------------------------------------------------------------


def test_chain_id_matches_the_network_preset_of_the_backend(chain: ChainBackend) -> None:
    assert chain.chain_id == get_network(chain.name).chain_id == chain.w3.eth.chain_id


def test_accounts_are_the_nodes_own_funded_accounts(chain: ChainBackend) -> None:
    addresses = [account.address for account in chain.accounts()]

    assert len(addresses) == 10
    assert addresses == chain.w3.eth.accounts[: len(addresses)]
    assert all(chain.w3.eth.get_balance(address) > 10**21 for address in addresses)


def test_funded_account_sends_a_locally_signed_eip1559_transfer(chain: ChainBackend) -> None:
    sender = chain.accounts()[0]
    balance_before = chain.w3.eth.get_balance(sender.address)

    receipt = send_value(chain, sender, 12_345)

    assert receipt["status"] == 1
    assert receipt["type"] == 2
    assert chain.w3.eth.get_balance(RECIPIENT) == 12_345
    fee_wei = receipt["gasUsed"] * receipt["effectiveGasPrice"]
    assert chain.w3.eth.get_balance(sender.address) == balance_before - 12_345 - fee_wei


def test_blocks_follow_cancun_rules_not_prague(chain: ChainBackend) -> None:
    block = chain.w3.eth.get_block("latest")

    assert "blobGasUsed" in block
    assert "requestsHash" not in block


def test_set_next_block_timestamp_stamps_the_next_transaction_block(chain: ChainBackend) -> None:
    target = chain.now() + DAY_S

    chain.set_next_block_timestamp(target)
    receipt = send_value(chain, chain.accounts()[0], 1)

    assert block_timestamp(chain, receipt["blockNumber"]) == target


def test_increase_time_mines_a_block_exactly_that_many_seconds_later(chain: ChainBackend) -> None:
    before = chain.now()
    height_before = chain.w3.eth.block_number

    returned = chain.increase_time(30 * DAY_S)

    assert returned == before + 30 * DAY_S
    assert chain.now() == before + 30 * DAY_S
    assert chain.w3.eth.block_number == height_before + 1


def test_transactions_after_increase_time_see_at_least_the_new_time(chain: ChainBackend) -> None:
    travelled_to = chain.increase_time(3_600)

    receipt = send_value(chain, chain.accounts()[1], 1)

    assert block_timestamp(chain, receipt["blockNumber"]) >= travelled_to


def test_mine_adds_blocks_with_strictly_increasing_timestamps(chain: ChainBackend) -> None:
    height_before = chain.w3.eth.block_number

    chain.mine(3)

    assert chain.w3.eth.block_number == height_before + 3
    stamps = [block_timestamp(chain, height_before + i) for i in range(4)]
    assert stamps == sorted(set(stamps))


def test_set_next_block_timestamp_not_after_latest_raises_TimestampNotIncreasing(
    chain: ChainBackend,
) -> None:
    latest = chain.now()

    with pytest.raises(TimestampNotIncreasing) as raised:
        chain.set_next_block_timestamp(latest)

    assert raised.value.code == "timestamp_not_increasing"
    assert chain.now() == latest


def test_revert_restores_balances_nonces_height_and_time(chain: ChainBackend) -> None:
    sender = chain.accounts()[2]
    w3 = chain.w3
    balances_before = (w3.eth.get_balance(sender.address), w3.eth.get_balance(RECIPIENT))
    nonce_before = w3.eth.get_transaction_count(sender.address)
    height_before, time_before = w3.eth.block_number, chain.now()
    token = chain.snapshot()
    send_value(chain, sender, 10**18)
    chain.increase_time(365 * DAY_S)

    chain.revert(token)

    assert (w3.eth.get_balance(sender.address), w3.eth.get_balance(RECIPIENT)) == balances_before
    assert w3.eth.get_transaction_count(sender.address) == nonce_before
    assert (w3.eth.block_number, chain.now()) == (height_before, time_before)
    assert send_value(chain, sender, 1)["status"] == 1


def test_revert_consumes_the_snapshot_and_every_later_one(chain: ChainBackend) -> None:
    first = chain.snapshot()
    chain.mine()
    second = chain.snapshot()

    chain.revert(first)

    for token in (first, second):
        with pytest.raises(SnapshotNotFound) as raised:
            chain.revert(token)
        assert raised.value.code == "snapshot_not_found"


def test_revert_to_an_unknown_token_raises_SnapshotNotFound(chain: ChainBackend) -> None:
    with pytest.raises(SnapshotNotFound):
        chain.revert("0x7fffffff")


# --- anvil process control -------------------------------------------------------------------


@pytest.mark.anvil
def test_anvil_stop_ends_the_process_and_frees_its_port(anvil_binary: Path) -> None:
    with AnvilProcess(binary=anvil_binary) as anvil:
        pid, port = anvil.pid, anvil.port
        assert Web3(HTTPProvider(anvil.url)).eth.chain_id == 31337
        assert process_exists(pid)
        assert not port_is_free(port)

    assert not process_exists(pid)
    assert port_is_free(port)


@pytest.mark.anvil
def test_launched_anvil_backend_stops_its_own_node_on_close(anvil_binary: Path) -> None:
    with AnvilBackend.launch(AnvilConfig(chain_id=1337, accounts_count=3)) as backend:
        pid = backend.process.pid
        assert backend.chain_id == 1337
        assert len(backend.accounts()) == 3

    assert not process_exists(pid)


@pytest.mark.anvil
def test_anvil_that_exits_at_start_raises_AnvilStartFailed_with_its_stderr(
    anvil_binary: Path,
) -> None:
    anvil = AnvilProcess(AnvilConfig(hardfork="no-such-fork"), binary=anvil_binary)

    with pytest.raises(AnvilStartFailed) as raised:
        anvil.start()

    assert raised.value.code == "anvil_start_failed"
    assert "no-such-fork" in raised.value.stderr_tail
    assert "no-such-fork" in str(raised.value)


def test_node_that_never_answers_is_stopped_and_raises_AnvilStartFailed(tmp_path: Path) -> None:
    pid_file = tmp_path / "pid"
    silent_node = tmp_path / "anvil"
    silent_node.write_text(
        f'#!/bin/sh\necho "still booting" >&2\necho $$ > {pid_file}\nexec sleep 60\n'
    )
    silent_node.chmod(0o755)
    anvil = AnvilProcess(AnvilConfig(startup_timeout_s=1.0), binary=silent_node)

    with pytest.raises(AnvilStartFailed, match="no answer to eth_chainId") as raised:
        anvil.start()

    assert "still booting" in raised.value.stderr_tail
    assert not process_exists(int(pid_file.read_text()))


def test_missing_anvil_binary_raises_AnvilNotFound(tmp_path: Path) -> None:
    missing = tmp_path / "bin" / "anvil"

    with pytest.raises(AnvilNotFound) as from_npm:
        resolve_anvil_binary(project_root=tmp_path, environ={})
    with pytest.raises(AnvilNotFound) as from_env:
        resolve_anvil_binary(environ={"ANVIL_BIN": str(missing)})
    with pytest.raises(AnvilNotFound) as from_start:
        AnvilProcess(binary=missing).start()

    assert from_npm.value.code == "anvil_not_found"
    assert "node_modules" in from_npm.value.path
    assert from_env.value.path == str(missing)
    assert from_start.value.path == str(missing)
    assert "npm ci" in str(from_env.value)


def test_anvil_binary_that_is_not_executable_raises_AnvilNotFound(tmp_path: Path) -> None:
    binary = tmp_path / "anvil"
    binary.write_text("not a program")
    binary.chmod(0o644)

    with pytest.raises(AnvilNotFound, match="not executable"):
        resolve_anvil_binary(environ={"ANVIL_BIN": str(binary)})


# --- plain RPC -------------------------------------------------------------------------------


@pytest.mark.anvil
def test_rpc_backend_refuses_a_node_serving_another_chain(anvil_process: AnvilProcess) -> None:
    with pytest.raises(ChainIdMismatch) as raised:
        RpcBackend(anvil_process.url, get_network("sepolia"))

    assert (raised.value.expected, raised.value.actual) == (11155111, 31337)
    assert raised.value.code == "chain_id_mismatch"


@pytest.mark.anvil
def test_rpc_backend_refuses_chain_control_with_UnsupportedOnBackend(
    anvil_process: AnvilProcess,
) -> None:
    backend = RpcBackend(anvil_process.url, get_network("anvil"))
    height = backend.w3.eth.block_number

    for operation in (
        backend.snapshot,
        lambda: backend.revert("0x0"),
        lambda: backend.increase_time(60),
        lambda: backend.set_next_block_timestamp(backend.now() + 60),
        backend.mine,
    ):
        with pytest.raises(UnsupportedOnBackend) as raised:
            operation()
        assert raised.value.code == "unsupported_on_backend"
    assert backend.w3.eth.block_number == height


# --- network presets -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "chain_id"),
    [
        ("embedded", 131277322940537),
        ("anvil", 31337),
        ("sepolia", 11155111),
        ("hoodi", 560048),
        ("base-sepolia", 84532),
        ("arbitrum-sepolia", 421614),
        ("op-sepolia", 11155420),
    ],
)
def test_get_network_returns_the_preset_with_its_chain_id(name: str, chain_id: int) -> None:
    assert get_network(name).chain_id == chain_id


def test_get_network_with_an_unknown_name_lists_the_valid_names() -> None:
    with pytest.raises(UnknownNetwork) as raised:
        get_network("mainnet")

    assert raised.value.code == "unknown_network"
    assert "sepolia" in str(raised.value)
    assert set(raised.value.valid_names) == set(NETWORKS)


def test_public_networks_wait_for_confirmations_and_local_ones_do_not() -> None:
    for network in NETWORKS.values():
        assert (network.confirmations_default == 0) == network.is_local, network
        assert (network.rpc_env_var is None) == network.is_local, network
