"""What an explorer needs to verify the deployed escrow's source: the compiler's standard JSON
input, refused unless it is exactly what the checked-in artifacts were compiled from, and the
compiler and artifact facts a deployment record keeps beside it."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.chain.contracts.compiler import (
    ARTIFACTS_DIR,
    SOLC_VERSION,
    compiler_settings,
    input_hash,
    standard_json_input,
)
from engine.chain.contracts.escrow import ESCROW_NAME
from engine.deploy.errors import ArtifactsStale


def checked_standard_input() -> dict[str, Any]:
    """The compiler input for source verification, refused unless it is exactly the input
    the checked-in artifacts were compiled from (else an explorer could not verify them)."""
    standard_input = standard_json_input()
    recorded = json.loads(_artifact_path().read_text(encoding="utf-8"))["inputHash"]
    if input_hash(standard_input) != recorded:
        raise ArtifactsStale(
            "contracts/ (or an OpenZeppelin file it imports) differs from what the checked-in "
            "artifacts were compiled from: run `settle contracts build` or restore the sources"
        )
    return standard_input


def verification_fields(standard_input: Mapping[str, Any]) -> dict[str, Any]:
    """The record's "compiler" and "artifacts" sections: the exact build and the sha256 of
    the artifact that was deployed."""
    artifact_bytes = _artifact_path().read_bytes()
    return {
        "compiler": {
            "solc_version": SOLC_VERSION,
            "solc_build": json.loads(artifact_bytes)["compiler"]["version"],
            "settings": compiler_settings(),
            "input_hash": input_hash(standard_input),
        },
        "artifacts": {
            _artifact_path().name: {"sha256": hashlib.sha256(artifact_bytes).hexdigest()}
        },
    }


def _artifact_path() -> Path:
    return ARTIFACTS_DIR / f"{ESCROW_NAME}.json"
