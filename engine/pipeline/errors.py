"""Errors of building the settlement path from configuration, each with a stable code for the
CLI, the API and logs to classify a failure without parsing its message."""

from __future__ import annotations

from typing import ClassVar


class PipelineError(Exception):
    """Base of every error the pipeline raises on purpose."""

    code: ClassVar[str] = "pipeline_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class SignerNotRoleHolder(PipelineError):
    """A configured key does not hold the escrow role it would send with: every transaction it
    sent would revert, so the engine refuses to start."""

    code: ClassVar[str] = "signer_not_role_holder"


class EscrowNotDeployed(PipelineError):
    """The record names an address with no code on the node: a local chain restarted since the
    deployment, or an RPC URL of another network with the same chain id."""

    code: ClassVar[str] = "escrow_not_deployed"
