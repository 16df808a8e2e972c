"""The errors `settle deploy` refuses with, each with a stable code for the CLI to print.

They sit in one module, as the transaction manager's and the backends' do, because several
of the deployment's modules raise the same ones (InsufficientFunds: the plan's funds check
and the sender's).
"""

from __future__ import annotations

from engine.chain.errors import ChainError


class NetworkNotDeployable(ChainError):
    code = "network_not_deployable"


class RpcUnreachable(ChainError):
    code = "rpc_unreachable"


class InsufficientFunds(ChainError):
    code = "insufficient_funds"


class TransactionReverted(ChainError):
    code = "transaction_reverted"


class TransactionRejected(ChainError):
    """The node refused a signed transaction before it could be mined."""

    code = "transaction_rejected"


class ReceiptTimeout(ChainError):
    code = "receipt_timeout"


class CodeMismatch(ChainError):
    code = "code_mismatch"


class ArtifactsStale(ChainError):
    code = "artifacts_stale"


class RoleHolderInvalid(ChainError):
    code = "role_holder_invalid"
