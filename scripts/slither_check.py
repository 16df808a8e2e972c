"""Slither over the escrow, compiled exactly as its artifacts are; fails on untriaged findings.

Runs in .venv-tools (`make slither`), because slither pins a web3 the engine cannot use, so it may
not import `engine`: the project venv writes the compiler input that
engine/chain/contracts/compiler.py
builds (same sources, solc 0.8.30, viaIR, optimizer runs, evmVersion, remappings), and the same
solc-js shim compiles it. A High or Medium finding whose primary location is in the escrow fails
the check unless docs/slither-triage.md explains it; everything else is printed and passes.

Exit codes: 0 clean or fully triaged, 1 untriaged findings or a malformed triage entry,
2 the analysis could not run or ran incomplete.
"""

import inspect
import json
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from crytic_compile import CryticCompile
from crytic_compile.platform.exceptions import InvalidCompilation
from crytic_compile.platform.solc_standard_json import SolcStandardJson
from slither import Slither
from slither.detectors import all_detectors
from slither.detectors.abstract_detector import AbstractDetector
from slither.solc_parsing.declarations.contract import ContractSolc

PROJECT_ROOT: Final = Path(__file__).resolve().parents[1]
PROJECT_PYTHON: Final = PROJECT_ROOT / ".venv" / "bin" / "python"
SOLC_SHIM: Final = PROJECT_ROOT / "engine" / "chain" / "contracts" / "solc_shim.js"
TRIAGE_FILE: Final = PROJECT_ROOT / "docs" / "slither-triage.md"
TARGET_FILE: Final = "contracts/SettlementEscrow.sol"
OWN_SOURCES_PREFIX: Final = "contracts/"
GATING_IMPACTS: Final = ("High", "Medium")
IMPACT_ORDER: Final = ("High", "Medium", "Low", "Informational", "Optimization")
# Dumping the input only reads a few dozen files; a hang means a broken project venv.
INPUT_DUMP_TIMEOUT_S: Final = 120
VERDICTS: Final = ("false positive", "accepted")

_DUMP_INPUT: Final = (
    "import json, sys; from engine.chain.contracts.compiler import standard_json_input; "
    "json.dump(standard_json_input(), sys.stdout)"
)
# A triage row: | `detector-id` | `Contract.function` | verdict | reason |
_TRIAGE_ROW: Final = re.compile(r"^\|\s*`([a-z0-9-]+)`\s*\|(.*)\|\s*$")
_LOCATION: Final = re.compile(r"[A-Za-z_$][A-Za-z0-9_$]*(\.[A-Za-z_$][A-Za-z0-9_$]*)?")


class CheckError(Exception):
    """The analysis could not be run, or not completely: no verdict on the contract is possible."""


@dataclass(frozen=True)
class Finding:
    impact: str
    check: str
    file: str
    lines: str
    location: str  # Contract.function, or Contract, or the element's name if in no contract

    @property
    def key(self) -> tuple[str, str]:
        return (self.check, self.location)

    @property
    def gating(self) -> bool:
        return self.file == TARGET_FILE and self.impact in GATING_IMPACTS


@dataclass(frozen=True)
class Triage:
    entries: dict[tuple[str, str], str]  # (detector, location) -> reason
    malformed: tuple[str, ...]


def main() -> int:
    started = time.monotonic()
    try:
        standard_input = _compiler_input()
        slither = _analyse(standard_input)
        findings = _run_detectors(slither)
        triage = read_triage(TRIAGE_FILE)
    except CheckError as error:
        print(f"slither check could not run: {error}", file=sys.stderr)
        return 2
    untriaged = _report(findings, triage)
    elapsed_s = time.monotonic() - started
    if untriaged or triage.malformed:
        print(
            f"FAILED in {elapsed_s:.1f}s: {len(untriaged)} High/Medium finding(s) in "
            f"{TARGET_FILE} without a triage entry in {TRIAGE_FILE.relative_to(PROJECT_ROOT)}, "
            f"{len(triage.malformed)} malformed triage row(s)"
        )
        return 1
    print(f"passed in {elapsed_s:.1f}s: every High/Medium finding in {TARGET_FILE} is triaged")
    return 0


def _compiler_input() -> dict[str, Any]:
    """The standard-JSON input of the artifacts, with the outputs slither needs."""
    if not PROJECT_PYTHON.is_file():
        raise CheckError(f"{PROJECT_PYTHON} is missing: run `make setup`")
    try:
        done = subprocess.run(
            [str(PROJECT_PYTHON), "-c", _DUMP_INPUT],
            cwd=PROJECT_ROOT,
            capture_output=True,
            text=True,
            timeout=INPUT_DUMP_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as error:
        raise CheckError(f"dumping the compiler input took over {error.timeout}s") from error
    if done.returncode != 0:
        raise CheckError(f"dumping the compiler input failed:\n{done.stderr.strip()}")
    standard_input: dict[str, Any] = json.loads(done.stdout)
    # The artifacts select only ABI and bytecode; without an outputSelection crytic-compile asks
    # for its default, which adds the ASTs and source maps slither parses. Output selection does
    # not change the code generated, so this is still the artifacts' compilation.
    del standard_input["settings"]["outputSelection"]
    return standard_input


def _analyse(standard_input: dict[str, Any]) -> Any:
    if not os.access(SOLC_SHIM, os.X_OK):
        raise CheckError(f"{SOLC_SHIM} is not executable")
    try:
        compilation = CryticCompile(
            SolcStandardJson(standard_input),
            solc=str(SOLC_SHIM),
            # Source unit names are relative to the project root; resolving them there lets
            # slither read the files for its source mappings.
            solc_working_dir=str(PROJECT_ROOT),
        )
    except InvalidCompilation as error:
        raise CheckError(f"the contracts did not compile:\n{error}") from error
    _merge_inherited_using_for()
    # Inline `slither-disable` comments and a local slither.db.json would hide findings; the
    # triage file is the one place a finding may be explained away.
    slither = Slither(compilation, show_ignored_findings=True)
    _require_complete_analysis(slither)
    return slither


def _merge_inherited_using_for() -> None:
    """Work around slither giving a contract only its last parent's `using L for *` directive.

    Slither copies the parents' using-for tables into a contract with dict.update, so when two
    parents each declare `using L for *` (EIP712: ShortStrings, ReentrancyGuardTransient:
    TransientSlot) one library is lost: the inherited EIP712 functions get no IR, and slither
    then skips the SSA form of every function of the escrow, which its data-flow detectors need.
    Merging the lists is what the directives mean, and a no-op once slither merges them itself.
    """
    original = ContractSolc.analyze_using_for

    def analyze_using_for(parser: Any) -> None:
        original(parser)
        contract = parser.underlying_contract
        for father in contract.inheritance:
            for key, libraries in father.using_for.items():
                # New lists: slither's copies alias the parents' lists.
                current = contract.using_for.get(key, [])
                contract.using_for[key] = current + [x for x in libraries if x not in current]

    ContractSolc.analyze_using_for = analyze_using_for


def _require_complete_analysis(slither: Any) -> None:
    """Refuse a verdict when slither could not translate part of the escrow.

    A function without IR is invisible to every detector, and one such function (even an
    inherited dependency one) makes slither drop the SSA form of the whole contract.
    """
    broken = [c for c in slither.contracts if _file_of(c) == TARGET_FILE]
    broken = [c for c in broken if c.is_incorrectly_constructed]
    if not broken:
        return
    functions = sorted(
        f.canonical_name
        for contract in broken
        for f in contract.functions_and_modifiers
        if any(node.expression is not None and not node.irs for node in f.nodes)
    )
    raise CheckError(
        "slither could not fully analyse "
        + ", ".join(c.name for c in broken)
        + (f"; functions without IR: {', '.join(functions)}" if functions else "")
    )


def _file_of(contract: Any) -> str:
    return str(contract.source_mapping.filename.relative)


def _run_detectors(slither: Any) -> list[Finding]:
    """Every detector slither ships, as its command line runs them by default."""
    for _, detector in inspect.getmembers(all_detectors, inspect.isclass):
        if issubclass(detector, AbstractDetector):
            slither.register_detector(detector)
    results = [result for per_detector in slither.run_detectors() for result in per_detector]
    findings = {_finding(result) for result in results}
    return sorted(findings, key=_display_order)


def _finding(result: Mapping[str, Any]) -> Finding:
    elements = result["elements"]
    primary = elements[0] if elements else {}
    source = primary.get("source_mapping", {})
    lines = source.get("lines") or [0]
    return Finding(
        impact=result["impact"],
        check=result["check"],
        file=source.get("filename_relative", "?"),
        lines=f"{lines[0]}-{lines[-1]}" if len(lines) > 1 else str(lines[0]),
        location=_location(primary),
    )


def _location(element: Mapping[str, Any]) -> str:
    """Contract.function of an element, found by walking up its parents; line-independent."""
    function = None
    current: Mapping[str, Any] | None = element
    while current:
        kind = current.get("type")
        if kind == "function" and function is None:
            function = current["name"]
        elif kind == "contract":
            return f"{current['name']}.{function}" if function else str(current["name"])
        current = current.get("type_specific_fields", {}).get("parent")
    return str(function or element.get("name", "?"))


def _display_order(finding: Finding) -> tuple[int, str, str, str]:
    rank = IMPACT_ORDER.index(finding.impact) if finding.impact in IMPACT_ORDER else 99
    return (rank, finding.file, finding.check, finding.location)


def read_triage(path: Path) -> Triage:
    """The triage table: rows of `detector`, `Contract.function`, verdict and a reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return Triage({}, ())
    entries: dict[tuple[str, str], str] = {}
    malformed: list[str] = []
    for line in text.splitlines():
        row = _TRIAGE_ROW.match(line.strip())
        if row is None:
            continue
        cells = [cell.strip() for cell in row.group(2).split("|")]
        if len(cells) != 3:
            malformed.append(line)
            continue
        location, verdict, reason = cells[0].strip("`"), cells[1].lower(), cells[2]
        if not _LOCATION.fullmatch(location) or verdict not in VERDICTS or not reason:
            malformed.append(line)
            continue
        entries[(row.group(1), location)] = reason
    return Triage(entries, tuple(malformed))


def _report(findings: Iterable[Finding], triage: Triage) -> list[Finding]:
    """Prints the findings in our sources, one a line; returns the untriaged gating ones."""
    untriaged: list[Finding] = []
    matched: set[tuple[str, str]] = set()
    in_dependencies: Counter[str] = Counter()
    rows = [("impact", "detector", "location", "source", "status")]
    for finding in findings:
        if not finding.file.startswith(OWN_SOURCES_PREFIX):
            in_dependencies[finding.impact] += 1
            continue
        if not finding.gating:
            status = ""
        elif finding.key in triage.entries:
            matched.add(finding.key)
            status = "triaged"
        else:
            untriaged.append(finding)
            status = "UNTRIAGED"
        source = f"{finding.file}#{finding.lines}"
        rows.append((finding.impact, finding.check, finding.location, source, status))
    widths = [max(len(row[column]) for row in rows) for column in range(len(rows[0]))]
    for row in rows:
        print(
            "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        )
    if in_dependencies:
        counts = ", ".join(f"{in_dependencies[i]} {i}" for i in IMPACT_ORDER if in_dependencies[i])
        print(f"not listed: findings in dependencies (node_modules): {counts}")
    for detector, location in sorted(triage.entries.keys() - matched):
        print(f"stale triage entry (no such finding any more): {detector} {location}")
    for line in triage.malformed:
        print(f"malformed triage row (needs detector, location, verdict, reason): {line}")
    return untriaged


if __name__ == "__main__":
    sys.exit(main())
