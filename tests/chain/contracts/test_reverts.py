"""Revert data decodes to the custom error's name and arguments."""

from eth_abi import encode
from eth_utils import function_signature_to_4byte_selector

from engine.chain.contracts.reverts import decode_revert


def test_custom_error_decodes_with_named_arguments() -> None:
    selector = function_signature_to_4byte_selector("AmountExceedsCapturable(uint256,uint256)")
    error = decode_revert(selector + encode(["uint256", "uint256"], [5, 3]))
    assert error.error == "AmountExceedsCapturable"
    assert error.args_by_name == {"amount": 5, "capturable": 3}
    assert str(error) == "AmountExceedsCapturable(amount=5, capturable=3)"
    assert error.code == "contract_reverted"


def test_string_revert_and_unknown_selector_stay_readable() -> None:
    selector = function_signature_to_4byte_selector("Error(string)")
    assert str(decode_revert(selector + encode(["string"], ["boom"]))) == "Error(message=boom)"
    assert decode_revert(b"\xde\xad\xbe\xef").error == "UnknownError"


def test_malformed_arguments_are_shown_raw() -> None:
    selector = function_signature_to_4byte_selector("ZeroAmount()")
    assert decode_revert(selector).error == "ZeroAmount"
    truncated = function_signature_to_4byte_selector("NotPayer(address,address)") + b"\x01"
    assert decode_revert(truncated).args_by_name == {"data": b"\x01"}
