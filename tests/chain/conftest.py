"""Contract-test fixtures: one escrow deployment per backend, reverted after every test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from engine.chain.backends import ChainBackend
from engine.chain.localnet import LocalDeployment, deploy_local


@pytest.fixture(scope="session")
def deployment_session(chain_session: ChainBackend) -> LocalDeployment:
    return deploy_local(chain_session)


@pytest.fixture
def world(deployment_session: LocalDeployment, chain: ChainBackend) -> Iterator[LocalDeployment]:
    """The deployment, on a chain reverted to its just-deployed state after the test.

    Signers track nonces themselves, so they are re-read here, after the previous test's
    revert (this fixture's teardown would run before the chain fixture reverts)."""
    for signer in (
        deployment_session.admin,
        deployment_session.operator,
        deployment_session.arbiter,
        deployment_session.pauser,
        deployment_session.payer,
        deployment_session.merchant,
        deployment_session.fee_receiver,
        deployment_session.other,
    ):
        signer.resync()
    yield deployment_session
