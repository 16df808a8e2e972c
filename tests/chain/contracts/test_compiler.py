"""The compiler bridge: solc-js answers like native solc, and the artifacts track the sources.

Everything compiles small contracts written into a temporary directory, so these tests neither
depend on nor touch the project's own contracts and checked-in artifacts.
"""

import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import solcx
from packaging.version import Version
from solcx.exceptions import UnknownOption

from engine.chain.contracts.compiler import (
    CODE_SIZE_MAX_BYTES,
    PROJECT_ROOT,
    SOLC_SHIM,
    SOLC_VERSION,
    build,
    check,
    compile_all,
    find_solc,
    load_artifact,
    standard_json_input,
)
from engine.chain.errors import ArtifactMissing, CompilationFailed, CompilerUnavailable

pytestmark = pytest.mark.skipif(shutil.which("node") is None, reason="needs Node for solc-js")

# Linux's default pipe capacity: output beyond it is what a too-early exit would cut off.
PIPE_BUFFER_BYTES = 65_536
HEADER = "// SPDX-License-Identifier: MIT\npragma solidity 0.8.30;\n"
COUNTER = (
    HEADER + "contract Counter { uint256 public count; function bump() external { ++count; } }\n"
)
TOKEN = (
    HEADER
    + 'import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";\n'
    + 'import "./lib/Fees.sol";\n'
    + '// import "./Missing.sol";\n'
    + "contract Token is ERC20 {\n"
    + '    string public constant NOTE = "import \\"./AlsoMissing.sol\\";";\n'
    + '    constructor() ERC20("T", "T") {}\n'
    + "    function fee(uint256 amount) external pure returns (uint256) {\n"
    + "        return Fees.ceilBps(amount, 30);\n"
    + "    }\n"
    + "}\n"
)
FEES = (
    HEADER
    + "library Fees {\n"
    + "    function ceilBps(uint256 a, uint256 bps) internal pure returns (uint256) {\n"
    + "        return (a * bps + 9_999) / 10_000;\n"
    + "    }\n"
    + "}\n"
)


def write_contracts(root: Path, files: dict[str, str]) -> Path:
    contracts_dir = root / "contracts"
    for name, text in files.items():
        path = contracts_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return contracts_dir


def run_shim(
    *args: str, stdin: str = "", cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(SOLC_SHIM), *args], input=stdin, capture_output=True, text=True, cwd=cwd, check=False
    )


def test_shim_version_reads_as_native_solc_output_and_parses_as_the_pinned_version() -> None:
    lines = run_shim("--version").stdout.splitlines()

    assert lines[0] == "solc, the solidity compiler commandline interface"
    assert lines[1].startswith(f"Version: {SOLC_VERSION}+commit.")
    assert solcx.wrapper.get_solc_version(SOLC_SHIM) == Version(SOLC_VERSION)


def test_shim_compiles_through_py_solc_x_compile_standard() -> None:
    standard_input = {
        "language": "Solidity",
        "sources": {"Counter.sol": {"content": COUNTER}},
        "settings": {"outputSelection": {"*": {"*": ["evm.deployedBytecode.object"]}}},
    }

    output = solcx.compile_standard(standard_input, solc_binary=SOLC_SHIM)

    assert output["contracts"]["Counter.sol"]["Counter"]["evm"]["deployedBytecode"]["object"]


def test_shim_output_far_larger_than_a_pipe_buffer_arrives_whole_and_json_only(
    tmp_path: Path,
) -> None:
    contracts_dir = write_contracts(tmp_path, {"Token.sol": TOKEN, "lib/Fees.sol": FEES})
    standard_input = standard_json_input(contracts_dir)
    standard_input["settings"]["outputSelection"] = {"*": {"*": ["*"], "": ["ast"]}}

    result = run_shim("--standard-json", stdin=json.dumps(standard_input))

    assert result.returncode == 0
    assert len(result.stdout) > 4 * PIPE_BUFFER_BYTES
    output = json.loads(result.stdout)
    assert output["contracts"]["contracts/Token.sol"]["Token"]["evm"]["assembly"]


def test_shim_rejects_an_unknown_option_the_way_py_solc_x_recognises() -> None:
    with pytest.raises(UnknownOption, match="--no-such-flag"):
        solcx.wrapper.solc_wrapper(solc_binary=SOLC_SHIM, standard_json=True, no_such_flag=True)


def test_shim_named_solc_on_path_resolves_urls_and_imports_as_crytic_compile_calls_it(
    tmp_path: Path,
) -> None:
    write_contracts(tmp_path, {"Token.sol": TOKEN, "lib/Fees.sol": FEES})
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "solc").symlink_to(SOLC_SHIM)
    standard_input = {
        "language": "Solidity",
        "sources": {"contracts/Token.sol": {"urls": ["contracts/Token.sol"]}},
        "settings": {"outputSelection": {"*": {"*": ["abi"], "": ["ast"]}}},
    }

    result = subprocess.run(
        ["solc", "--standard-json", "--allow-paths", str(tmp_path)],
        input=json.dumps(standard_input),
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
        check=True,
    )

    output = json.loads(result.stdout)
    assert not [e for e in output.get("errors", []) if e["severity"] == "error"]
    assert "@openzeppelin/contracts/token/ERC20/ERC20.sol" in output["sources"]
    assert "contracts/lib/Fees.sol" in output["sources"]


def test_shim_resolves_imports_under_base_and_include_paths(tmp_path: Path) -> None:
    write_contracts(tmp_path / "project", {"lib/Fees.sol": FEES})
    source = HEADER + 'import "contracts/lib/Fees.sol";\ncontract UsesFees {}\n'
    standard_input = {
        "language": "Solidity",
        "sources": {"UsesFees.sol": {"content": source}},
        "settings": {"outputSelection": {"*": {"*": ["abi"]}}},
    }
    (tmp_path / "base").mkdir()

    result = run_shim(
        "--standard-json",
        "--base-path",
        str(tmp_path / "base"),
        f"--include-path={tmp_path / 'project'}",
        stdin=json.dumps(standard_input),
        cwd=Path("/"),
    )

    output = json.loads(result.stdout)
    assert "errors" not in output
    assert set(output["sources"]) == {"UsesFees.sol", "contracts/lib/Fees.sol"}


def test_standard_json_input_embeds_exactly_the_transitive_imports(tmp_path: Path) -> None:
    contracts_dir = write_contracts(tmp_path, {"Token.sol": TOKEN, "lib/Fees.sol": FEES})

    sources = standard_json_input(contracts_dir)["sources"]

    oz = "node_modules/@openzeppelin/contracts/"
    assert set(sources) == {
        "contracts/Token.sol",
        "contracts/lib/Fees.sol",
        oz + "token/ERC20/ERC20.sol",
        oz + "token/ERC20/IERC20.sol",
        oz + "token/ERC20/extensions/IERC20Metadata.sol",
        oz + "utils/Context.sol",
        oz + "interfaces/draft-IERC6093.sol",
    }
    erc20 = (PROJECT_ROOT / oz / "token/ERC20/ERC20.sol").read_text(encoding="utf-8")
    assert sources[oz + "token/ERC20/ERC20.sol"] == {"content": erc20}


def test_broken_source_raises_compilation_failed_naming_the_error(tmp_path: Path) -> None:
    broken = HEADER + "contract Broken { function f() external { undefinedThing(); } }\n"
    contracts_dir = write_contracts(tmp_path, {"Broken.sol": broken})

    with pytest.raises(CompilationFailed, match="Undeclared identifier") as raised:
        compile_all(contracts_dir)

    assert raised.value.code == "compilation_failed"
    assert any("contracts/Broken.sol" in error for error in raised.value.errors)


def test_import_of_a_missing_file_names_the_importer(tmp_path: Path) -> None:
    source = HEADER + 'import "./Gone.sol";\ncontract Orphan {}\n'
    contracts_dir = write_contracts(tmp_path, {"Orphan.sol": source})

    with pytest.raises(CompilationFailed, match=r"contracts/Orphan\.sol imports contracts/Gone"):
        standard_json_input(contracts_dir)


def test_contract_too_large_for_eip170_fails_the_build(tmp_path: Path) -> None:
    # Incompressible data, so the optimizer cannot shrink the code below the limit.
    words = (CODE_SIZE_MAX_BYTES // 32) + 1
    blob = "".join(hashlib.sha256(i.to_bytes(4, "big")).hexdigest() for i in range(words))
    source = HEADER + (
        "contract Huge {\n"
        f'    function blob() external pure returns (bytes memory) {{ return hex"{blob}"; }}\n'
        "}\n"
    )
    contracts_dir = write_contracts(tmp_path, {"Huge.sol": source})

    with pytest.raises(CompilationFailed, match="Huge is too large to deploy"):
        build(contracts_dir, tmp_path / "artifacts")

    assert not (tmp_path / "artifacts").exists()


def test_check_lists_tampered_missing_and_stale_artifacts_until_rebuilt(tmp_path: Path) -> None:
    contracts_dir = write_contracts(
        tmp_path, {"Counter.sol": COUNTER, "Token.sol": TOKEN, "lib/Fees.sol": FEES}
    )
    artifacts_dir = tmp_path / "artifacts"
    build(contracts_dir, artifacts_dir)
    assert sorted(p.name for p in artifacts_dir.iterdir()) == [
        "Counter.json",
        "Fees.json",
        "Token.json",
    ]
    assert check(contracts_dir, artifacts_dir) == []

    token = json.loads((artifacts_dir / "Token.json").read_text(encoding="utf-8"))
    token["deployedBytecode"] = token["deployedBytecode"][:-2] + "00"
    (artifacts_dir / "Token.json").write_text(json.dumps(token, indent=2) + "\n", encoding="utf-8")
    (artifacts_dir / "Counter.json").unlink()
    (artifacts_dir / "Retired.json").write_text("{}\n", encoding="utf-8")

    assert check(contracts_dir, artifacts_dir) == [
        "Counter.json: missing",
        "Retired.json: stale (no such contract)",
        "Token.json: differs (deployedBytecode)",
    ]

    build(contracts_dir, artifacts_dir)
    assert check(contracts_dir, artifacts_dir) == []
    assert not (artifacts_dir / "Retired.json").exists()


def test_artifact_records_compiler_and_input_hash_and_loads_without_a_compiler(
    tmp_path: Path,
) -> None:
    contracts_dir = write_contracts(tmp_path, {"Counter.sol": COUNTER})
    artifacts_dir = tmp_path / "artifacts"
    build(contracts_dir, artifacts_dir)

    raw = json.loads((artifacts_dir / "Counter.json").read_text(encoding="utf-8"))
    artifact = load_artifact("Counter", artifacts_dir)

    assert raw["sourceName"] == "contracts/Counter.sol"
    assert raw["compiler"]["version"].startswith(f"{SOLC_VERSION}+commit.")
    assert raw["compiler"]["settings"]["evmVersion"] == "cancun"
    assert len(raw["inputHash"]) == 64
    assert artifact.name == "Counter"
    assert {entry["name"] for entry in artifact.abi} == {"count", "bump"}
    assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 2
    assert artifact.deployed_bytecode == raw["deployedBytecode"]


def test_load_artifact_of_an_unbuilt_contract_raises_artifact_missing(tmp_path: Path) -> None:
    with pytest.raises(ArtifactMissing, match="Nowhere"):
        load_artifact("Nowhere", tmp_path)


def test_find_solc_prefers_a_native_solc_of_the_pinned_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The shim under the name `solc` answers `--version` exactly as a native build would.
    (tmp_path / "solc").symlink_to(SOLC_SHIM)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    assert find_solc() == tmp_path / "solc"


def test_find_solc_skips_a_native_solc_of_another_version(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    other = tmp_path / "solc"
    other.write_text(
        "#!/bin/sh\necho 'solc, the solidity compiler commandline interface'\n"
        "echo 'Version: 0.8.29+commit.ab55807c.Linux.g++'\n",
        encoding="utf-8",
    )
    other.chmod(0o755)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")

    assert find_solc() == SOLC_SHIM


def test_find_solc_without_node_or_native_solc_raises_compiler_unavailable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))

    with pytest.raises(CompilerUnavailable, match=SOLC_VERSION):
        find_solc()
