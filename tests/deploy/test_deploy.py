"""`settle deploy`: deterministic CREATE2 deployments on anvil started with each testnet's chain
id, signer keys from the environment or a keystore, and every refusal the issue lists."""

from __future__ import annotations

import hashlib
import json
import logging
import socket
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any, NamedTuple, Protocol

import pytest
import rlp
from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from eth_utils import keccak, to_checksum_address
from web3 import HTTPProvider, Web3
from web3.types import RPCEndpoint

from engine.chain.backends import EmbeddedBackend
from engine.chain.backends.anvil import AnvilConfig, AnvilProcess, anvil_accounts
from engine.chain.contracts.compiler import (
    ARTIFACTS_DIR,
    SOLC_VERSION,
    compiler_settings,
    load_artifact,
    standard_json_input,
)
from engine.chain.contracts.escrow import ESCROW_NAME, ROLES
from engine.chain.errors import ChainIdMismatch, RpcUrlMissing
from engine.chain.keys import (
    KEY_ENV_VAR,
    PASSWORD_ENV_VAR,
    KeystoreMalformed,
    KeystoreMissing,
    KeystorePasswordMissing,
    KeystorePasswordWrong,
    SignerKeyMalformed,
    SignerKeyMissing,
    load_signer,
)
from engine.chain.networks import NETWORKS, get_network
from engine.cli.deploy import cmd_deploy
from engine.deploy.create2 import (
    PROXY_ADDRESS,
    PROXY_DEPLOYER,
    PROXY_DEPLOYMENT_TX,
    PROXY_RUNTIME_CODE,
    Create2ProxyUnavailable,
    ProxyState,
    create2_address,
    proxy_state,
)
from engine.deploy.deployed_code import check_escrow_code
from engine.deploy.deployer import deploy
from engine.deploy.errors import (
    CodeMismatch,
    InsufficientFunds,
    NetworkNotDeployable,
    RpcUnreachable,
    TransactionReverted,
)
from engine.deploy.escrow_create2 import ESCROW_SALT, escrow_address
from engine.deploy.plan import plan_deployment
from engine.deploy.roles import ROLE_ENV_VARS, role_id
from engine.deploy.sender import Sender, current_fees, estimate_gas
from engine.store.redaction import redact_url

TESTNETS = sorted(name for name, network in NETWORKS.items() if not network.is_local)
PASSWORD = "correct horse battery staple"
# A reverting initcode: PUSH1 0 PUSH1 0 REVERT.
REVERTING_INITCODE = bytes.fromhex("60006000fd")


class Node(NamedTuple):
    url: str
    w3: Web3


class StartAnvil(Protocol):
    def __call__(self, network: str = "anvil") -> Node: ...


@pytest.fixture
def dev_account() -> LocalAccount:
    return anvil_accounts(1)[0]


@pytest.fixture
def start_anvil(anvil_binary: Path) -> Iterator[StartAnvil]:
    """Starts an anvil with the chain id of the network named (default: anvil's own); every
    one started stops when the test ends."""
    with ExitStack() as stack:

        def start(network: str = "anvil") -> Node:
            config = AnvilConfig(chain_id=get_network(network).chain_id, accounts_count=3)
            process = stack.enter_context(AnvilProcess(config, binary=anvil_binary))
            return Node(process.url, Web3(HTTPProvider(process.url)))

        yield start


@pytest.fixture
def in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Runs the command in an empty directory: deployments/ and var/ land there."""
    monkeypatch.chdir(tmp_path)
    for variable in (KEY_ENV_VAR, PASSWORD_ENV_VAR, *ROLE_ENV_VARS.values()):
        monkeypatch.delenv(variable, raising=False)
    return tmp_path


@pytest.fixture
def deployer(
    in_tmp: Path, dev_account: LocalAccount, monkeypatch: pytest.MonkeyPatch
) -> LocalAccount:
    """anvil's first dev account, whose key the command finds in the environment."""
    monkeypatch.setenv(KEY_ENV_VAR, dev_account.key.hex())
    return dev_account


def run_deploy(
    capsys: pytest.CaptureFixture[str],
    network: str,
    url: str,
    *,
    keystore: Path | None = None,
    dry_run: bool = False,
) -> dict[str, Any]:
    assert cmd_deploy(network, url, keystore, dry_run, as_json=True) == 0
    output: dict[str, Any] = json.loads(capsys.readouterr().out)
    return output


def write_keystore(path: Path, key: bytes, *, address: str | None = None) -> Path:
    """An encrypted keystore of `key` under PASSWORD, with a KDF cheap enough for tests;
    `address` overrides the address field the file claims."""
    keyfile = Account.encrypt(key, PASSWORD, kdf="pbkdf2", iterations=2)
    if address is not None:
        keyfile["address"] = address
    path.write_text(json.dumps(keyfile))
    return path


def predicted_address(admin: str) -> ChecksumAddress:
    """keccak256(0xff ++ proxy ++ salt ++ keccak256(initcode))[12:], computed independently."""
    initcode = bytes.fromhex(load_artifact(ESCROW_NAME).bytecode[2:])
    initcode += bytes(12) + bytes.fromhex(admin[2:])
    digest = keccak(b"\xff" + bytes.fromhex(PROXY_ADDRESS[2:]) + ESCROW_SALT + keccak(initcode))
    return to_checksum_address(digest[12:])


def escrow_roles(w3: Web3, escrow: str, account: str) -> set[str]:
    contract = w3.eth.contract(
        address=to_checksum_address(escrow), abi=load_artifact(ESCROW_NAME).abi
    )
    return {role for role in ROLES if contract.functions.hasRole(role_id(role), account).call()}


def fund(w3: Web3, address: str, wei: int) -> None:
    w3.manager.request_blocking(RPCEndpoint("anvil_setBalance"), [address, hex(wei)])


def files_in(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.is_file())


# --- deploying -----------------------------------------------------------------------------


@pytest.mark.anvil
@pytest.mark.parametrize("network", [*TESTNETS, "anvil"])
def test_deploys_at_the_create2_address_on_anvil_started_with_each_preset_chain_id(
    network: str,
    start_anvil: StartAnvil,
    in_tmp: Path,
    deployer: LocalAccount,
    capsys: pytest.CaptureFixture[str],
) -> None:
    chain_id = get_network(network).chain_id
    url, w3 = start_anvil(network)

    output = run_deploy(capsys, network, url)

    escrow = output["escrow"]["address"]
    assert output["status"] == "deployed"
    assert escrow == predicted_address(deployer.address) == escrow_address(deployer.address)
    assert output["chain_id"] == chain_id
    assert escrow_roles(w3, escrow, deployer.address) == set(ROLES)
    code = bytes(w3.eth.get_code(escrow))
    assert output["escrow"]["code_keccak"] == "0x" + keccak(code).hex()
    assert (in_tmp / "deployments" / f"{chain_id}.json").is_file()


@pytest.mark.anvil
def test_rerun_with_the_escrow_and_roles_in_place_sends_and_writes_nothing(
    start_anvil: StartAnvil,
    in_tmp: Path,
    deployer: LocalAccount,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, w3 = start_anvil("sepolia")
    first = run_deploy(capsys, "sepolia", url)
    record = in_tmp / "deployments" / "11155111.json"
    written = record.read_bytes()
    nonce = w3.eth.get_transaction_count(deployer.address)

    second = run_deploy(capsys, "sepolia", url)

    assert second["status"] == "unchanged"
    assert second["sent"] == []
    assert second["escrow"] == first["escrow"]
    assert w3.eth.get_transaction_count(deployer.address) == nonce
    assert record.read_bytes() == written


@pytest.mark.anvil
def test_deploys_with_a_key_from_an_encrypted_keystore(
    start_anvil: StartAnvil,
    in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    owner = Account.create()
    keystore = write_keystore(in_tmp / "deployer.json", owner.key)
    monkeypatch.setenv(PASSWORD_ENV_VAR, PASSWORD)
    url, w3 = start_anvil("base-sepolia")
    fund(w3, owner.address, 10**18)

    output = run_deploy(capsys, "base-sepolia", url, keystore=keystore)

    assert output["status"] == "deployed"
    assert output["escrow"]["admin"] == owner.address
    assert output["escrow"]["address"] == predicted_address(owner.address)
    assert escrow_roles(w3, output["escrow"]["address"], owner.address) == set(ROLES)


@pytest.mark.anvil
def test_roles_go_to_the_configured_holders_instead_of_the_deployer(
    start_anvil: StartAnvil,
    deployer: LocalAccount,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    operator, arbiter = Account.create().address, Account.create().address
    monkeypatch.setenv("SETTLE_OPERATORS", f"{operator}, {deployer.address}")
    monkeypatch.setenv("SETTLE_ARBITERS", arbiter.lower())
    url, w3 = start_anvil()

    output = run_deploy(capsys, "anvil", url)

    escrow = output["escrow"]["address"]
    assert escrow_roles(w3, escrow, operator) == {"OPERATOR_ROLE"}
    assert escrow_roles(w3, escrow, arbiter) == {"ARBITER_ROLE"}
    assert escrow_roles(w3, escrow, deployer.address) == {"OPERATOR_ROLE", "PAUSER_ROLE"}
    recorded = {role: [e["account"] for e in entries] for role, entries in output["roles"].items()}
    assert recorded == {
        "OPERATOR_ROLE": [operator, deployer.address],
        "ARBITER_ROLE": [arbiter],
        "PAUSER_ROLE": [deployer.address],
    }


@pytest.mark.anvil
def test_deployments_record_names_addresses_txs_blocks_compiler_and_artifact_hashes(
    start_anvil: StartAnvil,
    in_tmp: Path,
    deployer: LocalAccount,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, w3 = start_anvil("op-sepolia")

    run_deploy(capsys, "op-sepolia", url)

    record = json.loads((in_tmp / "deployments" / "11155420.json").read_text())
    escrow = record["escrow"]
    receipt = w3.eth.get_transaction_receipt(escrow["tx_hash"])
    assert receipt["blockNumber"] == escrow["block_number"]
    assert receipt["to"] == PROXY_ADDRESS
    assert escrow["address"] == predicted_address(deployer.address)
    assert escrow["admin"] == deployer.address
    assert escrow["salt"] == "0x" + ESCROW_SALT.hex()
    assert (
        escrow["constructor_arguments"]
        == "0x" + (bytes(12) + bytes.fromhex(deployer.address[2:])).hex()
    )
    for role in ROLES:
        (entry,) = record["roles"][role]
        assert entry["account"] == deployer.address
        assert (
            w3.eth.get_transaction_receipt(entry["tx_hash"])["blockNumber"] == entry["block_number"]
        )
    assert record["create2_proxy"] == {"address": PROXY_ADDRESS, "installed_by_tx": None}
    assert record["compiler"]["solc_version"] == SOLC_VERSION
    assert record["compiler"]["settings"] == compiler_settings()
    artifact = (ARTIFACTS_DIR / f"{ESCROW_NAME}.json").read_bytes()
    assert record["artifacts"] == {
        f"{ESCROW_NAME}.json": {"sha256": hashlib.sha256(artifact).hexdigest()}
    }
    assert record["compiler"]["input_hash"] == json.loads(artifact)["inputHash"]
    standard_input = in_tmp / "deployments" / record["standard_input"]
    assert json.loads(standard_input.read_text()) == standard_json_input()


@pytest.mark.anvil
def test_record_of_an_escrow_deployed_before_by_another_admin_is_kept_as_previous(
    start_anvil: StartAnvil,
    in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    first_admin, second_admin = anvil_accounts(2)
    url, _ = start_anvil()
    monkeypatch.setenv(KEY_ENV_VAR, first_admin.key.hex())
    first = run_deploy(capsys, "anvil", url)
    monkeypatch.setenv(KEY_ENV_VAR, second_admin.key.hex())

    second = run_deploy(capsys, "anvil", url)

    assert second["escrow"]["address"] != first["escrow"]["address"]
    assert [p["escrow"]["address"] for p in second["previous"]] == [first["escrow"]["address"]]


@pytest.mark.anvil
def test_rerun_after_the_record_was_lost_rewrites_it_without_sending(
    start_anvil: StartAnvil,
    in_tmp: Path,
    deployer: LocalAccount,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, w3 = start_anvil()
    first = run_deploy(capsys, "anvil", url)
    (in_tmp / "deployments" / "31337.json").unlink()
    nonce = w3.eth.get_transaction_count(deployer.address)

    second = run_deploy(capsys, "anvil", url)

    assert second["status"] == "updated"
    assert second["sent"] == []
    assert w3.eth.get_transaction_count(deployer.address) == nonce
    assert second["escrow"]["address"] == first["escrow"]["address"]
    # What this run did not see is not claimed: the deployment tx is unknown now.
    assert second["escrow"]["tx_hash"] is None


@pytest.mark.anvil
def test_anvil_without_a_key_deploys_from_anvils_public_dev_account(
    start_anvil: StartAnvil,
    in_tmp: Path,
    dev_account: LocalAccount,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, _ = start_anvil()

    assert cmd_deploy("anvil", url, None, dry_run=False, as_json=False) == 0

    out = capsys.readouterr().out
    assert f"anvil's public dev account {dev_account.address}" in out
    assert f"deployed {predicted_address(dev_account.address)}" in out


# --- the embedded EVM, which lacks the CREATE2 proxy ---------------------------------------


def test_presigned_proxy_transaction_creates_the_proxy_from_the_one_time_deployer() -> None:
    nonce, gas_price, gas, to, value, data, v, _r, _s = rlp.decode(PROXY_DEPLOYMENT_TX)

    assert Account.recover_transaction(PROXY_DEPLOYMENT_TX) == PROXY_DEPLOYER
    assert (nonce, to, value, v) == (b"", b"", b"", b"\x1b")  # nonce 0, a creation, pre-EIP-155
    assert (int.from_bytes(gas_price), int.from_bytes(gas)) == (100 * 10**9, 100_000)
    created = keccak(rlp.encode([bytes.fromhex(PROXY_DEPLOYER[2:]), 0]))[12:]
    assert to_checksum_address(created) == PROXY_ADDRESS
    assert data[14:] == PROXY_RUNTIME_CODE  # the initcode returns the code after its 14 bytes


def test_deploy_installs_the_missing_proxy_on_the_embedded_evm_then_deploys_through_it(
    tmp_path: Path,
) -> None:
    backend = EmbeddedBackend()
    account = backend.accounts()[0]
    assert proxy_state(backend.w3) is ProxyState.MISSING

    plan = plan_deployment(backend.w3, get_network("embedded"), account.address)
    result = deploy(backend.w3, plan, account, tmp_path)

    assert bytes(backend.w3.eth.get_code(PROXY_ADDRESS)) == PROXY_RUNTIME_CODE
    assert result.record["create2_proxy"]["installed_by_tx"] is not None
    assert result.record["escrow"]["address"] == predicted_address(account.address)
    assert escrow_roles(backend.w3, plan.escrow, account.address) == set(ROLES)


@pytest.mark.anvil
def test_other_code_at_the_proxy_address_is_refused_before_anything_is_sent(
    start_anvil: StartAnvil, dev_account: LocalAccount
) -> None:
    _, w3 = start_anvil()
    w3.manager.request_blocking(RPCEndpoint("anvil_setCode"), [PROXY_ADDRESS, "0x6000"])

    with pytest.raises(Create2ProxyUnavailable, match="other code") as raised:
        plan_deployment(w3, get_network("anvil"), dev_account.address)

    assert raised.value.code == "create2_proxy_unavailable"
    assert w3.eth.get_transaction_count(dev_account.address) == 0


# --- dry run -------------------------------------------------------------------------------


@pytest.mark.anvil
def test_dry_run_prints_addresses_and_cost_and_sends_nothing(
    start_anvil: StartAnvil,
    in_tmp: Path,
    deployer: LocalAccount,
    capsys: pytest.CaptureFixture[str],
) -> None:
    url, w3 = start_anvil("arbitrum-sepolia")
    nonce = w3.eth.get_transaction_count(deployer.address)

    plan = run_deploy(capsys, "arbitrum-sepolia", url, dry_run=True)
    assert cmd_deploy("arbitrum-sepolia", url, None, dry_run=True, as_json=False) == 0
    shown = capsys.readouterr().out

    assert w3.eth.get_transaction_count(deployer.address) == nonce
    escrow = predicted_address(deployer.address)
    assert w3.eth.get_code(escrow) == b""
    assert files_in(in_tmp) == []
    assert plan["escrow"] == {
        "address": escrow,
        "salt": "0x" + ESCROW_SALT.hex(),
        "already_deployed": False,
    }
    assert [tx["what"] for tx in plan["transactions"]] == [f"deploy {ESCROW_NAME}"] + [
        f"grant {role} to {deployer.address}" for role in ROLES
    ]
    per_gas = plan["fees"]["base_fee_wei"] + plan["fees"]["priority_fee_wei"]
    assert plan["expected_cost_wei"] == plan["gas_total"] * per_gas
    assert plan["max_cost_wei"] >= plan["expected_cost_wei"] > 0
    assert plan["has_funds"] is True
    assert escrow in shown
    assert "estimated cost" in shown
    assert "nothing is sent" in shown


@pytest.mark.anvil
def test_dry_run_after_deploying_reports_the_escrow_in_place_and_nothing_to_send(
    start_anvil: StartAnvil, deployer: LocalAccount, capsys: pytest.CaptureFixture[str]
) -> None:
    url, _ = start_anvil()
    run_deploy(capsys, "anvil", url)

    plan = run_deploy(capsys, "anvil", url, dry_run=True)

    assert plan["escrow"]["already_deployed"] is True
    assert plan["transactions"] == []
    assert plan["max_cost_wei"] == 0


# --- refusals ------------------------------------------------------------------------------


@pytest.mark.anvil
def test_network_whose_chain_id_is_not_the_rpcs_is_refused_before_anything_is_sent(
    start_anvil: StartAnvil, in_tmp: Path, deployer: LocalAccount
) -> None:
    url, w3 = start_anvil()

    with pytest.raises(ChainIdMismatch) as raised:
        cmd_deploy("sepolia", url, None, dry_run=False, as_json=False)

    assert raised.value.code == "chain_id_mismatch"
    assert "chain id 31337" in str(raised.value) and "11155111" in str(raised.value)
    assert w3.eth.get_transaction_count(deployer.address) == 0
    assert files_in(in_tmp) == []


@pytest.mark.anvil
def test_wrong_keystore_password_is_refused_without_showing_password_or_key(
    start_anvil: StartAnvil,
    in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    owner = Account.create()
    keystore = write_keystore(in_tmp / "deployer.json", owner.key)
    wrong = "Tr0ub4dor&3"
    monkeypatch.setenv(PASSWORD_ENV_VAR, wrong)
    url, _ = start_anvil()

    with pytest.raises(KeystorePasswordWrong) as raised:
        cmd_deploy("anvil", url, keystore, dry_run=False, as_json=False)

    assert raised.value.code == "keystore_password_wrong"
    assert str(keystore) in str(raised.value)
    shown = str(raised.value) + repr(raised.value) + "".join(capsys.readouterr()) + caplog.text
    for secret in (wrong, PASSWORD, owner.key.hex()):
        assert secret not in shown
    assert raised.value.__suppress_context__


def test_rpc_that_is_down_is_named_in_the_error(deployer: LocalAccount) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing ever listens there

    with pytest.raises(RpcUnreachable) as raised:
        cmd_deploy("anvil", url, None, dry_run=True, as_json=False)

    assert raised.value.code == "rpc_unreachable"
    assert url in str(raised.value)
    assert "not answering (connection refused)" in str(raised.value)


@pytest.mark.anvil
def test_account_without_eth_is_refused_naming_it_and_what_it_needs(
    start_anvil: StartAnvil,
    in_tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    pauper = Account.create()
    monkeypatch.setenv(KEY_ENV_VAR, pauper.key.hex())
    url, w3 = start_anvil("hoodi")

    with pytest.raises(InsufficientFunds) as raised:
        cmd_deploy("hoodi", url, None, dry_run=False, as_json=False)

    assert raised.value.code == "insufficient_funds"
    assert pauper.address in str(raised.value)
    assert "holds 0 ETH but needs up to 0.0" in str(raised.value)
    assert w3.eth.get_transaction_count(pauper.address) == 0
    assert w3.eth.get_code(predicted_address(pauper.address)) == b""
    assert files_in(in_tmp) == []


@pytest.mark.anvil
def test_initcode_that_reverts_is_refused_at_simulation_and_when_mined(
    start_anvil: StartAnvil, dev_account: LocalAccount
) -> None:
    calldata = ESCROW_SALT + REVERTING_INITCODE
    _, w3 = start_anvil()

    with pytest.raises(TransactionReverted, match="would revert"):
        estimate_gas(w3, dev_account.address, PROXY_ADDRESS, calldata, "deploy")
    sender = Sender(w3, dev_account, current_fees(w3), receipt_timeout_s=30)
    with pytest.raises(TransactionReverted, match="reverted in block") as raised:
        sender.send(PROXY_ADDRESS, calldata, 100_000, "deploy")

    assert raised.value.code == "transaction_reverted"
    assert create2_address(ESCROW_SALT, REVERTING_INITCODE) not in str(raised.value)


def test_embedded_network_is_not_a_deployment_target(in_tmp: Path) -> None:
    with pytest.raises(NetworkNotDeployable):
        cmd_deploy("embedded", None, None, dry_run=True, as_json=False)


def test_testnet_without_rpc_url_names_the_variable_to_set(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SEPOLIA_RPC_URL", raising=False)

    with pytest.raises(RpcUrlMissing, match="SEPOLIA_RPC_URL"):
        cmd_deploy("sepolia", None, None, dry_run=True, as_json=False)


def test_rpc_urls_are_shown_without_path_or_credentials() -> None:
    assert redact_url("http://127.0.0.1:8545") == "http://127.0.0.1:8545"
    assert redact_url("https://eth-sepolia.g.example.com/v2/s3cr3tKey") == (
        "https://eth-sepolia.g.example.com/…"
    )
    assert (
        redact_url("https://user:pw@rpc.example.org:8443/?key=abc")
        == "https://rpc.example.org:8443/…"
    )


# --- the deployed code check ---------------------------------------------------------------


@pytest.mark.anvil
def test_code_check_accepts_only_the_artifact_with_this_chains_immutables(
    start_anvil: StartAnvil,
    dev_account: LocalAccount,
    tmp_path: Path,
) -> None:
    runtime = bytes.fromhex(load_artifact(ESCROW_NAME).deployed_bytecode[2:])
    _, w3 = start_anvil()
    plan = plan_deployment(w3, get_network("anvil"), dev_account.address)
    deploy(w3, plan, dev_account, tmp_path)
    code = bytes(w3.eth.get_code(plan.escrow))
    assert code != runtime  # the constructor filled in the immutables

    check_escrow_code(code, runtime, 31337, plan.escrow)

    with pytest.raises(CodeMismatch, match="unexpected immutable"):
        check_escrow_code(code, runtime, 11155111, plan.escrow)  # domain of another chain
    other = Account.create().address
    with pytest.raises(CodeMismatch, match="unexpected immutable"):
        check_escrow_code(code, runtime, 31337, other)
    tampered = bytearray(code)
    tampered[100] ^= 0x01
    with pytest.raises(CodeMismatch, match="differs at byte 100"):
        check_escrow_code(bytes(tampered), runtime, 31337, plan.escrow)
    with pytest.raises(CodeMismatch, match="another contract"):
        check_escrow_code(code[:-1], runtime, 31337, plan.escrow)


@pytest.mark.anvil
def test_plan_refuses_foreign_code_at_the_escrow_address(
    start_anvil: StartAnvil, dev_account: LocalAccount
) -> None:
    escrow = predicted_address(dev_account.address)
    _, w3 = start_anvil()
    w3.manager.request_blocking(RPCEndpoint("anvil_setCode"), [escrow, "0x6000"])

    with pytest.raises(CodeMismatch) as raised:
        plan_deployment(w3, get_network("anvil"), dev_account.address)

    assert raised.value.code == "code_mismatch"


# --- signer keys ---------------------------------------------------------------------------


def test_key_comes_from_the_environment_when_no_keystore_is_given() -> None:
    owner = Account.create()

    for written in (owner.key.hex(), "0x" + owner.key.hex(), f"  {owner.key.hex()}\n"):
        assert load_signer(None, environ={KEY_ENV_VAR: written}).address == owner.address


@pytest.mark.parametrize("bad", ["0x1234", "zz" * 32, "00" * 32, "ff" * 32])
def test_malformed_key_in_the_environment_is_refused_without_quoting_it(bad: str) -> None:
    with pytest.raises(SignerKeyMalformed) as raised:
        load_signer(None, environ={KEY_ENV_VAR: bad})

    assert raised.value.code == "signer_key_malformed"
    assert bad not in str(raised.value)
    assert KEY_ENV_VAR in str(raised.value)


def test_no_key_at_all_says_how_to_give_one() -> None:
    with pytest.raises(SignerKeyMissing, match="--keystore FILE, or set SETTLE_DEPLOYER_KEY"):
        load_signer(None, environ={})


def test_keystore_password_comes_from_the_prompt_when_not_in_the_environment(
    tmp_path: Path,
) -> None:
    owner = Account.create()
    keystore = write_keystore(tmp_path / "key.json", owner.key)
    asked: list[str] = []

    def prompt(question: str) -> str:
        asked.append(question)
        return PASSWORD

    assert load_signer(keystore, environ={}, prompt=prompt).address == owner.address
    assert asked == [f"Password for keystore {keystore}: "]


def test_keystore_without_password_or_terminal_is_refused(tmp_path: Path) -> None:
    keystore = write_keystore(tmp_path / "key.json", Account.create().key)

    # pytest's stdin is not a terminal, so no prompt is offered.
    with pytest.raises(KeystorePasswordMissing, match=PASSWORD_ENV_VAR):
        load_signer(keystore, environ={})


def test_missing_or_malformed_keystore_is_refused(tmp_path: Path) -> None:
    with pytest.raises(KeystoreMissing, match="does not exist"):
        load_signer(tmp_path / "nope.json", environ={PASSWORD_ENV_VAR: PASSWORD})
    for content in ("not json", "[]", '{"version": 3}'):
        bad = tmp_path / "bad.json"
        bad.write_text(content)
        with pytest.raises(KeystoreMalformed):
            load_signer(bad, environ={PASSWORD_ENV_VAR: PASSWORD})


def test_keystore_whose_address_field_is_not_its_keys_is_refused(tmp_path: Path) -> None:
    keystore = write_keystore(
        tmp_path / "key.json", Account.create().key, address=Account.create().address[2:].lower()
    )

    with pytest.raises(KeystoreMalformed, match="another address"):
        load_signer(keystore, environ={PASSWORD_ENV_VAR: PASSWORD})
