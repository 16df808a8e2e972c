"""Credit events: the escrow's credits of an account, as its credit stream stores them."""

from __future__ import annotations

import pytest

from engine.domain.credits import (
    Credited,
    CreditReversed,
    Withdrawn,
    credit_event_from_dict,
    reversal_of,
    stream_id,
)
from engine.domain.errors import InvalidEvent

TOKEN = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
ACCOUNT = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
TO = "0x3C44CdDdB6a900fa2b585dd299e03d12FA4293BC"


def test_credit_events_come_back_from_their_dict_equal() -> None:
    credited = Credited(chain_id=1, token=TOKEN.lower(), account=ACCOUNT, amount=5, at=10)
    withdrawn = Withdrawn(chain_id=1, token=TOKEN, account=ACCOUNT, to=TO, amount=5, at=11)

    assert credit_event_from_dict(credited.to_dict()) == credited
    assert credit_event_from_dict(withdrawn.to_dict()) == withdrawn
    assert credited.token == TOKEN  # EIP-55, so one account has one stream
    assert credited.stream_id == withdrawn.stream_id == stream_id(1, TOKEN, ACCOUNT)
    assert credited.stream_id == f"credits:1:{TOKEN}:{ACCOUNT}"


@pytest.mark.parametrize(
    "change",
    [
        {"kind": "captured"},
        {"amount": 0},
        {"chain_id": 0},
        {"account": "0x1234"},
        {"extra": 1},
    ],
)
def test_a_malformed_credit_event_is_refused(change: dict[str, object]) -> None:
    data = {**Credited(chain_id=1, token=TOKEN, account=ACCOUNT, amount=5, at=10).to_dict()}
    data.update(change)

    with pytest.raises(InvalidEvent):
        credit_event_from_dict(data)


def test_a_reversal_undoes_one_event_of_the_same_stream_and_names_its_kind() -> None:
    withdrawn = Withdrawn(chain_id=1, token=TOKEN, account=ACCOUNT, to=TO, amount=5, at=11)

    reversal = reversal_of(withdrawn)

    assert (reversal.of, reversal.amount, reversal.stream_id) == (
        "withdrawn",
        5,
        withdrawn.stream_id,
    )
    assert credit_event_from_dict(reversal.to_dict()) == reversal
    with pytest.raises(InvalidEvent):
        CreditReversed(chain_id=1, token=TOKEN, account=ACCOUNT, amount=5, at=11, of="captured")
