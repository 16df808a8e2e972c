"""Money: exact decimal parsing, the contract's fee rule and capture splits."""

from decimal import Decimal
from fractions import Fraction
from math import ceil

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.domain.errors import InvalidAddress, InvalidAmount, InvalidAsset, InvalidFeeBps
from engine.domain.money import (
    AMOUNT_MAX,
    BPS_DENOMINATOR,
    DECIMALS_MAX,
    EXTRA_LEGS_MAX,
    Asset,
    Leg,
    checksum_address,
    fee_for,
    split_capture,
)

USDC = Asset("USDC", "0xa0b86991c6218b36c1d19d4a2e9eb0ce3606eb48", 6)
CENTS = Asset("USD", None, 2)
WHOLE = Asset("JPY", None, 0)
RECIPIENT = "0x" + "ab" * 20

amounts = st.integers(min_value=0, max_value=AMOUNT_MAX)
positive_amounts = st.integers(min_value=1, max_value=AMOUNT_MAX)
rates = st.integers(min_value=0, max_value=BPS_DENOMINATOR)
assets = st.builds(
    Asset, symbol=st.just("TKN"), token=st.none(), decimals=st.integers(0, DECIMALS_MAX)
)

fast = settings(max_examples=200, deadline=None)


@fast
@given(amount=positive_amounts, bps=st.integers(min_value=1, max_value=BPS_DENOMINATOR))
def test_a_nonzero_rate_on_a_nonzero_amount_pays_at_least_one_unit(amount: int, bps: int) -> None:
    assert fee_for(amount, bps) >= 1


@fast
@given(amount=amounts, bps=rates)
def test_fee_is_the_ceiling_of_amount_times_bps_over_ten_thousand(amount: int, bps: int) -> None:
    assert fee_for(amount, bps) == ceil(Fraction(amount * bps, BPS_DENOMINATOR))
    assert 0 <= fee_for(amount, bps) <= amount


@fast
@given(
    parts=st.lists(st.integers(min_value=1, max_value=10**9), min_size=1, max_size=20), bps=rates
)
def test_splitting_a_capture_into_pieces_never_lowers_the_total_fee(
    parts: list[int], bps: int
) -> None:
    assert sum(fee_for(part, bps) for part in parts) >= fee_for(sum(parts), bps)


def test_fee_on_the_smallest_amount_at_the_smallest_rate_is_one_unit() -> None:
    assert fee_for(1, 1) == 1
    assert fee_for(10_000, 1) == 1
    assert fee_for(10_001, 1) == 2
    assert fee_for(5, 0) == 0


@pytest.mark.parametrize("bps", [-1, BPS_DENOMINATOR + 1, True, 1.5, "30"])
def test_fee_rejects_a_rate_outside_zero_to_ten_thousand_bps(bps: object) -> None:
    with pytest.raises(InvalidFeeBps) as raised:
        fee_for(100, bps)  # type: ignore[arg-type]
    assert raised.value.code == "invalid_fee_bps"


@pytest.mark.parametrize("amount", [-1, AMOUNT_MAX + 1, 1.0, True, Decimal(1)])
def test_fee_rejects_amounts_that_are_not_holdable_integers(amount: object) -> None:
    with pytest.raises(InvalidAmount):
        fee_for(amount, 30)  # type: ignore[arg-type]


legs = st.lists(
    st.builds(Leg, recipient=st.just(RECIPIENT), amount=st.integers(1, 10**6)),
    max_size=EXTRA_LEGS_MAX,
)


@fast
@given(amount=st.integers(min_value=1, max_value=10**12), bps=rates, extra_legs=legs)
def test_split_legs_sum_to_the_captured_amount(
    amount: int, bps: int, extra_legs: list[Leg]
) -> None:
    extras = sum(leg.amount for leg in extra_legs)
    fee = fee_for(amount, bps)
    if fee + extras > amount:
        with pytest.raises(InvalidAmount):
            split_capture(amount, bps, extra_legs)
        return
    split = split_capture(amount, bps, extra_legs)
    assert split.merchant_net + split.fee + extras == amount
    assert split.fee == fee
    assert split.extras == tuple(extra_legs)
    assert split.merchant_net >= 0


def test_split_takes_the_fee_on_the_gross_amount_and_legs_from_the_merchant_share() -> None:
    split = split_capture(10_000, 250, [Leg(RECIPIENT, 1_000)])
    assert (split.fee, split.merchant_net) == (250, 8_750)


def test_split_rejects_legs_that_exceed_the_merchant_share() -> None:
    with pytest.raises(InvalidAmount, match="exceed"):
        split_capture(1_000, 100, [Leg(RECIPIENT, 991)])


def test_split_rejects_more_extra_legs_than_the_escrow_accepts() -> None:
    with pytest.raises(InvalidAmount, match="at most"):
        split_capture(10**6, 0, [Leg(RECIPIENT, 1)] * (EXTRA_LEGS_MAX + 1))


def test_split_rejects_a_zero_capture() -> None:
    with pytest.raises(InvalidAmount):
        split_capture(0, 0)


def test_a_leg_must_move_a_positive_amount_to_a_valid_address() -> None:
    with pytest.raises(InvalidAmount):
        Leg(RECIPIENT, 0)
    with pytest.raises(InvalidAddress):
        Leg("0x1234", 1)
    assert Leg(RECIPIENT, 1).recipient == checksum_address(RECIPIENT, "r")


@fast
@given(asset=assets, data=st.data())
def test_formatting_then_parsing_returns_the_same_minor_units(
    asset: Asset, data: st.DataObject
) -> None:
    minor = data.draw(amounts)
    assert asset.parse_amount(asset.format_amount(minor)) == minor


@fast
@given(asset=assets, data=st.data())
def test_parsing_is_exact_for_any_string_within_the_assets_decimals(
    asset: Asset, data: st.DataObject
) -> None:
    whole = data.draw(st.integers(min_value=0, max_value=AMOUNT_MAX // 10**asset.decimals - 1))
    fraction = data.draw(st.text("0123456789", max_size=asset.decimals))
    text = f"{whole}.{fraction}" if fraction else str(whole)
    minor = asset.parse_amount(text)
    assert Fraction(minor, 10**asset.decimals) == Fraction(Decimal(text))


def test_parsing_and_formatting_use_the_assets_decimals() -> None:
    assert USDC.parse_amount("12.34") == 12_340_000
    assert USDC.format_amount(12_340_000) == "12.340000"
    assert CENTS.parse_amount("12.3") == 1_230
    assert CENTS.format_amount(5) == "0.05"
    assert WHOLE.parse_amount("1200") == 1_200
    assert WHOLE.format_amount(1_200) == "1200"


def test_parsing_stays_exact_beyond_decimals_default_28_digit_precision() -> None:
    text = USDC.format_amount(AMOUNT_MAX)
    assert len(text.replace(".", "")) > 28
    assert USDC.parse_amount(text) == AMOUNT_MAX


@pytest.mark.parametrize("text", ["12.345", "0.001"])
def test_parsing_rejects_more_decimals_than_the_asset_has(text: str) -> None:
    with pytest.raises(InvalidAmount, match="decimals"):
        CENTS.parse_amount(text)


def test_parsing_a_fraction_for_a_zero_decimal_asset_is_rejected() -> None:
    with pytest.raises(InvalidAmount):
        WHOLE.parse_amount("12.0")


@pytest.mark.parametrize(
    "text",
    [
        "-1",
        "+1",
        "1e3",
        "NaN",
        "nan",
        "Infinity",
        "inf",
        " 1",
        "1 ",
        "1.",
        ".5",
        "1,5",
        "",
        "0x10",
        "\u0661",
        "1_000",
    ],
)
def test_parsing_rejects_anything_but_a_plain_non_negative_decimal(text: str) -> None:
    with pytest.raises(InvalidAmount) as raised:
        USDC.parse_amount(text)
    assert raised.value.code == "invalid_amount"


@pytest.mark.parametrize("value", [1.5, 12, Decimal("1.5"), None, True])
def test_parsing_rejects_non_string_input_including_floats(value: object) -> None:
    with pytest.raises(InvalidAmount, match="decimal string"):
        USDC.parse_amount(value)


def test_parsing_rejects_amounts_the_escrow_cannot_hold() -> None:
    with pytest.raises(InvalidAmount):
        WHOLE.parse_amount(str(AMOUNT_MAX + 1))
    with pytest.raises(InvalidAmount):
        USDC.parse_amount("9" * 10_000)


def test_formatting_rejects_negative_and_non_integer_amounts() -> None:
    with pytest.raises(InvalidAmount):
        USDC.format_amount(-1)
    with pytest.raises(InvalidAmount):
        USDC.format_amount(1.0)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("symbol", "token", "decimals"),
    [
        ("", None, 6),
        ("US D", None, 6),
        ("X" * 17, None, 6),
        ("USD", None, -1),
        ("USD", None, DECIMALS_MAX + 1),
        ("USD", None, True),
        ("USD", None, 6.0),
    ],
)
def test_an_asset_rejects_a_bad_symbol_or_decimals(symbol: str, token: None, decimals: int) -> None:
    with pytest.raises(InvalidAsset):
        Asset(symbol, token, decimals)


def test_an_asset_keeps_its_token_address_checksummed() -> None:
    assert USDC.token == "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"


def test_checksum_address_accepts_one_case_and_correct_mixed_case_only() -> None:
    checksummed = "0xA0b86991c6218b36c1d19D4a2e9Eb0cE3606eB48"
    assert checksum_address(checksummed.lower(), "a") == checksummed
    assert checksum_address("0x" + checksummed[2:].upper(), "a") == checksummed
    assert checksum_address(checksummed, "a") == checksummed
    with pytest.raises(InvalidAddress, match="checksum"):
        checksum_address(checksummed.replace("A0b", "a0B"), "a")


@pytest.mark.parametrize("value", ["0x1234", "ab" * 20, "0x" + "zz" * 20, b"\x00" * 20, None])
def test_checksum_address_rejects_anything_but_20_hex_bytes(value: object) -> None:
    with pytest.raises(InvalidAddress) as raised:
        checksum_address(value, "payer")
    assert raised.value.code == "invalid_address"
