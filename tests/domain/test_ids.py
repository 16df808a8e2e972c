"""Public ids and the payment terms whose EIP-712 hash keys a payment on chain."""

import json
import random
import re
from dataclasses import fields, replace
from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.errors import (
    InvalidAddress,
    InvalidAmount,
    InvalidFeeBps,
    InvalidId,
    InvalidTerms,
)
from engine.domain.ids import (
    TERMS_SOLIDITY_FIELDS,
    TERMS_TYPE,
    IdPrefix,
    PaymentTerms,
    new_id,
    parse_id,
)
from engine.domain.money import AMOUNT_MAX, ZERO_ADDRESS

ESCROW = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
SIGNER_KEY = b"\x01" * 32  # any key: the test reads the digest eth_account signs, not the signature

addresses = st.binary(min_size=20, max_size=20).map(lambda raw: "0x" + raw.hex())
nonzero_addresses = addresses.filter(lambda a: a != ZERO_ADDRESS)


@st.composite
def payment_terms(draw: st.DrawFn) -> PaymentTerms:
    authorization_expiry = draw(st.integers(0, 2**48 - 1))
    max_fee_bps = draw(st.integers(0, 10_000))
    return PaymentTerms(
        payer=draw(nonzero_addresses),
        merchant=draw(nonzero_addresses),
        token=draw(nonzero_addresses),
        max_amount=draw(st.integers(1, AMOUNT_MAX)),
        authorization_expiry=authorization_expiry,
        refund_expiry=draw(st.integers(authorization_expiry, 2**48 - 1)),
        min_fee_bps=draw(st.integers(0, max_fee_bps)),
        max_fee_bps=max_fee_bps,
        fee_receiver=draw(nonzero_addresses) if max_fee_bps else draw(addresses),
        operator=draw(nonzero_addresses),
        salt=draw(st.integers(0, 2**256 - 1)),
    )


def _terms(**changes: Any) -> PaymentTerms:
    base: dict[str, Any] = {
        "payer": "0x" + "11" * 20,
        "merchant": "0x" + "22" * 20,
        "token": "0x" + "33" * 20,
        "max_amount": 1_000_000,
        "authorization_expiry": 1_000,
        "refund_expiry": 2_000,
        "min_fee_bps": 10,
        "max_fee_bps": 100,
        "fee_receiver": "0x" + "44" * 20,
        "operator": "0x" + "55" * 20,
        "salt": 1,
    }
    return PaymentTerms(**(base | changes))


def _eth_account_digest(terms: PaymentTerms, chain_id: int, escrow: str) -> bytes:
    """The digest eth_account signs for these terms, written out independently of our code."""
    message = {
        "types": {
            "EIP712Domain": [
                {"name": "name", "type": "string"},
                {"name": "version", "type": "string"},
                {"name": "chainId", "type": "uint256"},
                {"name": "verifyingContract", "type": "address"},
            ],
            "PaymentTerms": [
                {"name": "payer", "type": "address"},
                {"name": "merchant", "type": "address"},
                {"name": "token", "type": "address"},
                {"name": "maxAmount", "type": "uint120"},
                {"name": "authorizationExpiry", "type": "uint48"},
                {"name": "refundExpiry", "type": "uint48"},
                {"name": "minFeeBps", "type": "uint16"},
                {"name": "maxFeeBps", "type": "uint16"},
                {"name": "feeReceiver", "type": "address"},
                {"name": "operator", "type": "address"},
                {"name": "salt", "type": "uint256"},
            ],
        },
        "primaryType": "PaymentTerms",
        "domain": {
            "name": "SettlementEscrow",
            "version": "1",
            "chainId": chain_id,
            "verifyingContract": escrow,
        },
        "message": {
            "payer": terms.payer,
            "merchant": terms.merchant,
            "token": terms.token,
            "maxAmount": terms.max_amount,
            "authorizationExpiry": terms.authorization_expiry,
            "refundExpiry": terms.refund_expiry,
            "minFeeBps": terms.min_fee_bps,
            "maxFeeBps": terms.max_fee_bps,
            "feeReceiver": terms.fee_receiver,
            "operator": terms.operator,
            "salt": terms.salt,
        },
    }
    signable = encode_typed_data(full_message=message)
    return bytes(Account.sign_message(signable, SIGNER_KEY).message_hash)


@settings(max_examples=50, deadline=None)
@given(terms=payment_terms(), chain_id=st.integers(1, 2**64), escrow=nonzero_addresses)
def test_payment_hash_equals_eth_accounts_eip712_digest(
    terms: PaymentTerms, chain_id: int, escrow: str
) -> None:
    assert terms.payment_hash(chain_id, escrow) == _eth_account_digest(terms, chain_id, escrow)


def test_payment_hash_is_32_bytes_and_separated_by_chain_and_escrow() -> None:
    terms = _terms()
    digest = terms.payment_hash(31337, ESCROW)
    assert len(digest) == 32
    assert terms.payment_hash(1, ESCROW) != digest
    assert terms.payment_hash(31337, "0x" + "66" * 20) != digest
    assert terms.payment_hash(31337, ESCROW.lower()) == digest


@pytest.mark.parametrize("field", [f.name for f in fields(PaymentTerms)])
def test_changing_any_single_term_changes_the_payment_hash(field: str) -> None:
    terms = _terms()
    value = getattr(terms, field)
    changed: Any = "0x" + "77" * 20 if isinstance(value, str) else value + 1
    if field == "max_fee_bps":
        changed = 99
    assert replace(terms, **{field: changed}).payment_hash(1, ESCROW) != terms.payment_hash(
        1, ESCROW
    )


def test_terms_type_string_is_the_solidity_struct_in_declaration_order() -> None:
    assert TERMS_TYPE == (
        "PaymentTerms(address payer,address merchant,address token,uint120 maxAmount,"
        "uint48 authorizationExpiry,uint48 refundExpiry,uint16 minFeeBps,uint16 maxFeeBps,"
        "address feeReceiver,address operator,uint256 salt)"
    )


def test_terms_fields_are_the_solidity_fields_in_snake_case_and_same_order() -> None:
    snake = [re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower() for name, _ in TERMS_SOLIDITY_FIELDS]
    assert [f.name for f in fields(PaymentTerms)] == snake


def test_terms_keep_addresses_in_checksummed_form() -> None:
    terms = _terms(payer="0x" + "ab" * 20)
    assert terms.payer == "0xABaBaBaBABabABabAbAbABAbABabababaBaBABaB"


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"authorization_expiry": 2_001}, InvalidTerms),
        ({"min_fee_bps": 101}, InvalidTerms),
        ({"max_fee_bps": 10_001}, InvalidFeeBps),
        ({"min_fee_bps": -1}, InvalidFeeBps),
        ({"fee_receiver": ZERO_ADDRESS}, InvalidTerms),
        ({"max_amount": 0}, InvalidAmount),
        ({"max_amount": AMOUNT_MAX + 1}, InvalidAmount),
        ({"authorization_expiry": -1}, InvalidTerms),
        ({"refund_expiry": 2**48}, InvalidTerms),
        ({"salt": 2**256}, InvalidTerms),
        ({"salt": -1}, InvalidTerms),
        ({"salt": True}, InvalidTerms),
        ({"payer": ZERO_ADDRESS}, InvalidTerms),
        ({"merchant": ZERO_ADDRESS}, InvalidTerms),
        ({"token": ZERO_ADDRESS}, InvalidTerms),
        ({"operator": ZERO_ADDRESS}, InvalidTerms),
        ({"operator": "0x1234"}, InvalidAddress),
    ],
)
def test_terms_the_escrow_would_refuse_are_refused(
    changes: dict[str, Any], error: type[Exception]
) -> None:
    with pytest.raises(error):
        _terms(**changes)


def test_terms_without_a_fee_receiver_are_valid_when_no_fee_can_be_charged() -> None:
    terms = _terms(fee_receiver=ZERO_ADDRESS, min_fee_bps=0, max_fee_bps=0)
    assert terms.fee_receiver == ZERO_ADDRESS


def test_equal_expiries_are_allowed() -> None:
    assert _terms(authorization_expiry=2_000).refund_expiry == 2_000


@settings(max_examples=100, deadline=None)
@given(terms=payment_terms())
def test_terms_survive_a_json_round_trip(terms: PaymentTerms) -> None:
    assert PaymentTerms.from_dict(json.loads(json.dumps(terms.to_dict()))) == terms


def test_terms_from_dict_rejects_missing_or_unknown_fields() -> None:
    data = _terms().to_dict()
    with pytest.raises(InvalidTerms):
        PaymentTerms.from_dict({k: v for k, v in data.items() if k != "salt"})
    with pytest.raises(InvalidTerms):
        PaymentTerms.from_dict(data | {"extra": 1})


@pytest.mark.parametrize("prefix", list(IdPrefix))
def test_new_ids_carry_their_prefix_and_parse_back(prefix: IdPrefix) -> None:
    value = new_id(prefix)
    assert value.startswith(prefix.value + "_")
    assert parse_id(value, prefix) == value


def test_ids_from_the_same_seeded_source_are_reproducible() -> None:
    first = new_id(IdPrefix.PAYMENT, random.Random(7).randbytes)
    assert first == new_id(IdPrefix.PAYMENT, random.Random(7).randbytes)
    assert first != new_id(IdPrefix.PAYMENT, random.Random(8).randbytes)


_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz"


@settings(max_examples=200, deadline=None)
@given(raw=st.binary(min_size=16, max_size=16))
def test_an_id_encodes_all_128_random_bits_and_nothing_else(raw: bytes) -> None:
    value = new_id(IdPrefix.EVENT, lambda _: raw)
    body = value.removeprefix("evt_")
    decoded = 0
    for char in body:
        decoded = decoded * 32 + _ALPHABET.index(char)
    assert decoded.to_bytes(16, "big") == raw
    assert parse_id(value, IdPrefix.EVENT) == value


def test_new_id_rejects_a_random_source_returning_the_wrong_length() -> None:
    with pytest.raises(AssertionError):
        new_id(IdPrefix.PAYMENT, lambda n: bytes(n - 1))


def test_parsing_an_id_of_another_kind_names_the_expected_prefix() -> None:
    merchant = new_id(IdPrefix.MERCHANT)
    with pytest.raises(InvalidId, match="not a pay_ id") as raised:
        parse_id(merchant, IdPrefix.PAYMENT)
    assert raised.value.code == "invalid_id"


@pytest.mark.parametrize(
    "value",
    [
        "pay_",
        "pay_" + "0" * 25,
        "pay_" + "0" * 27,
        "pay_8" + "0" * 25,  # a first digit above 7 would need more than 128 bits
        "pay_0" + "i" * 25,
        "PAY_" + "0" * 26,
        "pay_" + "0" * 25 + "A",
        "pay-" + "0" * 26,
        " pay_" + "0" * 26,
        "xyz_" + "0" * 26,
        None,
        42,
    ],
)
def test_parsing_rejects_malformed_ids(value: object) -> None:
    with pytest.raises(InvalidId):
        parse_id(value, IdPrefix.PAYMENT)
