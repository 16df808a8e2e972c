"""Compiler bridge: the one place that says how contracts/ is compiled, and the artifacts it yields.

The engine runs from the checked-in artifacts alone, with no Node and no solc. Compiling is a
build step (`settle contracts build`) whose output is checked in, and `settle contracts check`
proves the checked-in files are exactly what the sources compile to.

The standard-JSON input embeds every source it needs, including the OpenZeppelin files actually
imported, so it is self-contained: the same input reproduces the artifacts anywhere and is the
input a block explorer needs to verify a deployed contract.
"""

import hashlib
import json
import os
import posixpath
import re
import shutil
import subprocess
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final, Literal

import solcx
from packaging.version import Version
from solcx.exceptions import SolcError

from engine.chain.errors import ArtifactMissing, CompilationFailed, CompilerUnavailable

SOLC_VERSION: Final = "0.8.30"
EVM_VERSION: Final = "cancun"
# Escrow functions run once per payment operation over the contract's whole life, so runtime gas
# matters far more than deployment size.
OPTIMIZER_RUNS: Final = 10_000
REMAPPINGS: Final = ("@openzeppelin/=node_modules/@openzeppelin/",)

PROJECT_ROOT: Final = Path(__file__).resolve().parents[3]
CONTRACTS_DIR: Final = PROJECT_ROOT / "contracts"
ARTIFACTS_DIR: Final = Path(__file__).resolve().parent / "artifacts"
SOLC_SHIM: Final = Path(__file__).resolve().parent / "solc_shim.js"

# Source unit names of our own sources start with this, wherever the directory really is, so the
# artifacts do not depend on where contracts/ was checked out.
CONTRACTS_PREFIX: Final = "contracts/"
# A bound on the transitive import walk; the project uses a few dozen files.
SOURCES_MAX: Final = 1_000
# Chains refuse larger code (EIP-170) and init code (EIP-3860); better to fail the build than
# the deployment.
CODE_SIZE_MAX_BYTES: Final = 24_576
INITCODE_SIZE_MAX_BYTES: Final = 49_152

# Only what the artifacts hold; the metadata is requested for the exact compiler build string.
_OUTPUT_SELECTION: Final = {
    "*": {"*": ["abi", "metadata", "evm.bytecode.object", "evm.deployedBytecode.object"]}
}

# Comments, string literals and import directives, scanned in one left-to-right pass so that an
# `import` inside a comment or a string is never mistaken for a directive. The first string
# literal of an import directive is its path, whichever of Solidity's four import forms it uses.
_LEXEME: Final = re.compile(
    r"""//[^\n]*|/\*.*?\*/"""
    r"""|\bimport\b[^;"']*("[^"\n]*"|'[^'\n]*')"""
    r"""|"(?:\\.|[^"\\\n])*"|'(?:\\.|[^'\\\n])*'""",
    re.DOTALL,
)
_CONTRACT_NAME: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*")


def compiler_settings() -> dict[str, Any]:
    """Every setting that changes the bytecode; the artifacts record it for verification."""
    return {
        "remappings": list(REMAPPINGS),
        "optimizer": {"enabled": True, "runs": OPTIMIZER_RUNS},
        # Measured on the escrow (eth-tester): the IR pipeline saves 1-5% gas per operation and
        # 7% on a batch of 50 charges, for 8% more deployment gas, paid once.
        "viaIR": True,
        "evmVersion": EVM_VERSION,
        # No metadata hash in the bytecode, so editing a comment or moving a file does not change
        # it. The CBOR trailer still carries the compiler version.
        "metadata": {"bytecodeHash": "none"},
    }


@dataclass(frozen=True)
class Artifact:
    """What the engine needs of a compiled contract at runtime."""

    name: str
    abi: tuple[dict[str, Any], ...]
    bytecode: str
    deployed_bytecode: str


@dataclass(frozen=True)
class ArtifactChange:
    """One way the artifacts directory differs from what the sources compile to."""

    file_name: str
    kind: Literal["missing", "differs", "stale"]
    detail: str = ""

    def describe(self) -> str:
        suffix = f" ({self.detail})" if self.detail else ""
        return f"{self.file_name}: {self.kind}{suffix}"


@dataclass(frozen=True)
class BuildReport:
    """The changes a build made (or, with write=False, would make) and the compiler's warnings."""

    artifacts_dir: Path
    artifact_count: int
    changes: tuple[ArtifactChange, ...]
    warnings: tuple[str, ...]


def find_solc() -> Path:
    """A native solc of the pinned version if one is on PATH, else the solc-js shim."""
    native = shutil.which("solc")
    if native is not None and _reports_pinned_version(Path(native)):
        return Path(native)
    if shutil.which("node") is None:
        raise CompilerUnavailable(
            f"no solc {SOLC_VERSION} on PATH and no Node to run solc-js: "
            "install Node 20 and run `npm ci`, or put a native solc of that version on PATH"
        )
    installed = _solcjs_version()
    if installed != SOLC_VERSION:
        found = f"solc-js {installed}" if installed else "no solc-js"
        raise CompilerUnavailable(
            f"{found} in {PROJECT_ROOT / 'node_modules'}, but solc {SOLC_VERSION} is pinned: "
            "run `npm ci`"
        )
    if not os.access(SOLC_SHIM, os.X_OK):
        raise CompilerUnavailable(f"{SOLC_SHIM} is not executable: run `chmod +x` on it")
    return SOLC_SHIM


def _reports_pinned_version(binary: Path) -> bool:
    try:
        version = solcx.wrapper.get_solc_version(binary)
    except (SolcError, OSError, subprocess.CalledProcessError):
        return False
    return version == Version(SOLC_VERSION)


def _solcjs_version() -> str | None:
    package = PROJECT_ROOT / "node_modules" / "solc" / "package.json"
    try:
        version = json.loads(package.read_text(encoding="utf-8"))["version"]
    except (OSError, ValueError, KeyError):
        return None
    return str(version)


def standard_json_input(contracts_dir: Path = CONTRACTS_DIR) -> dict[str, Any]:
    """Compiler input for every .sol under contracts_dir and all it imports, content embedded."""
    sources = _collect_sources(contracts_dir)
    return {
        "language": "Solidity",
        "sources": {name: {"content": content} for name, content in sources.items()},
        "settings": {**compiler_settings(), "outputSelection": _OUTPUT_SELECTION},
    }


def input_hash(standard_input: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of a compiler input: equal hashes mean equal compilations."""
    canonical = json.dumps(
        standard_input, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _collect_sources(contracts_dir: Path) -> dict[str, str]:
    roots = sorted(contracts_dir.rglob("*.sol"))
    if not roots:
        raise CompilationFailed(f"no Solidity sources under {contracts_dir}")
    pending: list[tuple[str, str | None]] = [
        (CONTRACTS_PREFIX + root.relative_to(contracts_dir).as_posix(), None) for root in roots
    ]
    sources: dict[str, str] = {}
    while pending:
        name, importer = pending.pop()
        if name in sources:
            continue
        if len(sources) == SOURCES_MAX:
            raise CompilationFailed(f"more than {SOURCES_MAX} sources reached from {contracts_dir}")
        path = _source_path(name, importer, contracts_dir)
        try:
            # Bytes decoded as they are: no newline translation, so the embedded content is the
            # file a verifier hashes.
            content = path.read_bytes().decode("utf-8")
        except FileNotFoundError as error:
            raise CompilationFailed(
                f"{importer} imports {name}, but {path} does not exist"
            ) from error
        sources[name] = content
        pending.extend((_resolve_import(imported, name), name) for imported in _imports(content))
    return dict(sorted(sources.items()))


def _imports(source: str) -> list[str]:
    return [match.group(1)[1:-1] for match in _LEXEME.finditer(source) if match.group(1)]


def _resolve_import(import_path: str, importer: str) -> str:
    """The source unit name solc gives an import: relative paths first, then remappings."""
    if import_path.startswith(("./", "../")):
        import_path = posixpath.normpath(posixpath.join(posixpath.dirname(importer), import_path))
    matching = [r.split("=", 1) for r in REMAPPINGS if import_path.startswith(r.split("=", 1)[0])]
    if not matching:
        return import_path
    prefix, target = max(matching, key=lambda remapping: len(remapping[0]))
    return target + import_path[len(prefix) :]


def _source_path(name: str, importer: str | None, contracts_dir: Path) -> Path:
    parts = PurePosixPath(name).parts
    if name.startswith("/") or ".." in parts:
        raise CompilationFailed(f"{importer} imports {name}, which is outside the project")
    if name.startswith(CONTRACTS_PREFIX):
        return contracts_dir.joinpath(*parts[1:])
    return PROJECT_ROOT.joinpath(*parts)


def compile_standard_json(
    standard_input: Mapping[str, Any], solc: Path | None = None
) -> dict[str, Any]:
    """Compiler output for a self-contained input; compile errors raise CompilationFailed."""
    binary = solc or find_solc()
    try:
        output: dict[str, Any] = solcx.compile_standard(dict(standard_input), solc_binary=binary)
    except SolcError as error:
        if error.error_dict:
            errors = tuple(
                entry.get("formattedMessage") or entry["message"]
                for entry in error.error_dict
                if entry["severity"] == "error"
            )
            raise CompilationFailed("solc rejected the sources:", errors) from error
        raise CompilationFailed(
            f"{binary} failed with exit code {error.return_code}: {error.stderr_data}"
        ) from error
    except json.JSONDecodeError as error:
        raise CompilationFailed(f"{binary} did not answer with JSON: {error}") from error
    # A source the input does not embed came from the compiler's import callback: our import
    # resolution disagrees with solc's and the input is no longer self-contained.
    loaded_elsewhere = sorted(set(output.get("sources", {})) - set(standard_input["sources"]))
    if loaded_elsewhere:
        raise CompilationFailed(
            "the compiler loaded sources the input does not embed:", tuple(loaded_elsewhere)
        )
    return output


def compile_all(contracts_dir: Path = CONTRACTS_DIR, solc: Path | None = None) -> dict[str, Any]:
    """Compiler output for everything under contracts_dir."""
    return compile_standard_json(standard_json_input(contracts_dir), solc)


def compiler_warnings(output: Mapping[str, Any]) -> tuple[str, ...]:
    """Everything the compiler said that did not stop it."""
    return tuple(
        entry.get("formattedMessage") or entry["message"]
        for entry in output.get("errors", [])
        if entry["severity"] != "error"
    )


def _render_artifacts(
    standard_input: Mapping[str, Any], output: Mapping[str, Any]
) -> dict[str, str]:
    """File name -> exact file text of every artifact, in a stable format."""
    settings = {k: v for k, v in standard_input["settings"].items() if k != "outputSelection"}
    hashed = input_hash(standard_input)
    rendered: dict[str, str] = {}
    for source_name, contracts in sorted(output.get("contracts", {}).items()):
        if not source_name.startswith(CONTRACTS_PREFIX):
            continue
        for name, compiled in sorted(contracts.items()):
            file_name = f"{name}.json"
            if file_name in rendered:
                raise CompilationFailed(
                    f"two contracts are named {name}; artifacts are keyed by contract name"
                )
            version = json.loads(compiled["metadata"])["compiler"]["version"]
            if not version.startswith(f"{SOLC_VERSION}+"):
                raise CompilationFailed(f"compiled by solc {version}, but {SOLC_VERSION} is pinned")
            bytecode = compiled["evm"]["bytecode"]["object"]
            deployed_bytecode = compiled["evm"]["deployedBytecode"]["object"]
            _check_code_size(name, bytecode, deployed_bytecode)
            artifact = {
                "contractName": name,
                "sourceName": source_name,
                "abi": compiled["abi"],
                "bytecode": "0x" + bytecode,
                "deployedBytecode": "0x" + deployed_bytecode,
                "compiler": {"version": version, "settings": settings},
                "inputHash": hashed,
            }
            rendered[file_name] = json.dumps(artifact, indent=2, ensure_ascii=False) + "\n"
    return rendered


def _check_code_size(name: str, bytecode: str, deployed_bytecode: str) -> None:
    code_size_bytes = len(deployed_bytecode) // 2
    initcode_size_bytes = len(bytecode) // 2
    if code_size_bytes > CODE_SIZE_MAX_BYTES or initcode_size_bytes > INITCODE_SIZE_MAX_BYTES:
        raise CompilationFailed(
            f"{name} is too large to deploy: {code_size_bytes} bytes of code "
            f"(limit {CODE_SIZE_MAX_BYTES}), {initcode_size_bytes} bytes of init code "
            f"(limit {INITCODE_SIZE_MAX_BYTES}); lower OPTIMIZER_RUNS or split the contract"
        )


def _changes(rendered: Mapping[str, str], artifacts_dir: Path) -> tuple[ArtifactChange, ...]:
    present = {p.name for p in artifacts_dir.glob("*.json") if not p.name.startswith(".")}
    changes = [
        ArtifactChange(name, "stale", "no such contract") for name in present - set(rendered)
    ]
    for file_name, text in rendered.items():
        if file_name not in present:
            changes.append(ArtifactChange(file_name, "missing"))
            continue
        current = (artifacts_dir / file_name).read_text(encoding="utf-8")
        if current != text:
            changes.append(ArtifactChange(file_name, "differs", _differing_fields(current, text)))
    return tuple(sorted(changes, key=lambda change: change.file_name))


def _differing_fields(current: str, expected: str) -> str:
    try:
        old = json.loads(current)
    except ValueError:
        return "not valid JSON"
    new = json.loads(expected)
    if not isinstance(old, dict):
        return "not a JSON object"
    fields = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(fields) if fields else "formatting"


def build(
    contracts_dir: Path = CONTRACTS_DIR,
    artifacts_dir: Path = ARTIFACTS_DIR,
    *,
    write: bool = True,
    solc: Path | None = None,
) -> BuildReport:
    """Compile contracts_dir and bring artifacts_dir in line with it (only reports if not write)."""
    standard_input = standard_json_input(contracts_dir)
    output = compile_standard_json(standard_input, solc)
    rendered = _render_artifacts(standard_input, output)
    changes = _changes(rendered, artifacts_dir)
    if write:
        _apply(changes, rendered, artifacts_dir)
    return BuildReport(artifacts_dir, len(rendered), changes, compiler_warnings(output))


def _apply(
    changes: tuple[ArtifactChange, ...], rendered: Mapping[str, str], artifacts_dir: Path
) -> None:
    artifacts_dir.mkdir(parents=True, exist_ok=True)
    for change in changes:
        target = artifacts_dir / change.file_name
        if change.kind == "stale":
            target.unlink()
            continue
        # Replace, never rewrite in place: a reader sees the old file or the new one, whole.
        partial = artifacts_dir / f".{change.file_name}.partial"
        partial.write_text(rendered[change.file_name], encoding="utf-8")
        partial.replace(target)


def check(
    contracts_dir: Path = CONTRACTS_DIR,
    artifacts_dir: Path = ARTIFACTS_DIR,
    *,
    solc: Path | None = None,
) -> list[str]:
    """How the artifacts differ from a fresh compile; empty when they are exactly up to date."""
    report = build(contracts_dir, artifacts_dir, write=False, solc=solc)
    return [change.describe() for change in report.changes]


def load_artifact(name: str, artifacts_dir: Path = ARTIFACTS_DIR) -> Artifact:
    """The checked-in artifact of a contract; needs neither Node nor solc."""
    path = artifacts_dir / f"{name}.json"
    if not _CONTRACT_NAME.fullmatch(name) or not path.is_file():
        raise ArtifactMissing(f"no artifact for contract {name!r} in {artifacts_dir}")
    data = json.loads(path.read_text(encoding="utf-8"))
    if data["contractName"] != name:
        raise ArtifactMissing(f"{path} holds contract {data['contractName']!r}, not {name!r}")
    return Artifact(
        name=name,
        abi=tuple(data["abi"]),
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
    )
