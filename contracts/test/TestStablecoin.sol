// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {ERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/ERC20Permit.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/**
 * @title TestStablecoin
 * @notice A USDC stand-in for local chains and tests: 6 decimals, EIP-2612 permit and ERC-3009
 * signed transfers, so the escrow's gasless pull paths run against the same signature schemes
 * as on a public network.
 * @dev LOCAL USE ONLY. `mint` is open to anyone; never deploy this token where it could be
 * mistaken for money. ERC-3009 messages are signed under the same EIP-712 domain as permit
 * (name "Test USD", version "1", chain id, this address), and signatures are (v, r, s) exactly
 * as in USDC's FiatTokenV2.
 */
contract TestStablecoin is ERC20, ERC20Permit {
    /// @notice EIP-712 typehash of an ERC-3009 transfer anyone may submit.
    bytes32 public constant TRANSFER_WITH_AUTHORIZATION_TYPEHASH =
        keccak256(
            "TransferWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
        );

    /// @notice EIP-712 typehash of an ERC-3009 transfer only the payee may submit.
    bytes32 public constant RECEIVE_WITH_AUTHORIZATION_TYPEHASH =
        keccak256(
            "ReceiveWithAuthorization(address from,address to,uint256 value,uint256 validAfter,uint256 validBefore,bytes32 nonce)"
        );

    /// @notice EIP-712 typehash of an ERC-3009 cancellation of an unused authorization.
    bytes32 public constant CANCEL_AUTHORIZATION_TYPEHASH =
        keccak256("CancelAuthorization(address authorizer,bytes32 nonce)");

    /// @dev authorizer => nonce => used or canceled. ERC-3009 nonces are random, not sequential,
    /// so that independent authorizations can be settled in any order.
    mapping(address authorizer => mapping(bytes32 nonce => bool used)) private _authorizationStates;

    /// @notice Emitted when an authorization is consumed by a transfer.
    event AuthorizationUsed(address indexed authorizer, bytes32 indexed nonce);

    /// @notice Emitted when an authorizer cancels an authorization before it was used.
    event AuthorizationCanceled(address indexed authorizer, bytes32 indexed nonce);

    /// @notice The authorization's validity window has not opened (`block.timestamp <= validAfter`).
    error AuthorizationNotYetValid(uint256 validAfter);

    /// @notice The authorization's validity window has closed (`block.timestamp >= validBefore`).
    error AuthorizationExpired(uint256 validBefore);

    /// @notice The nonce was already used or canceled by this authorizer.
    error AuthorizationAlreadyUsed(address authorizer, bytes32 nonce);

    /// @notice The signature recovers to `signer`, not to the authorizer `expected`.
    error AuthorizationInvalidSigner(address signer, address expected);

    /// @notice `receiveWithAuthorization` was submitted by `caller` rather than the payee.
    error AuthorizationCallerNotPayee(address caller, address payee);

    constructor() ERC20("Test USD", "TUSD") ERC20Permit("Test USD") {}

    /// @notice Six decimals, like USDC, so amounts in tests are the same minor units as in production.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /**
     * @notice Creates `amount` tokens for `to`. Anyone may call: this token is for local use only.
     * @dev Emits {Transfer} from the zero address.
     */
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /**
     * @notice Moves `value` from `from` to `to` on the strength of `from`'s signature; anyone may
     * submit it.
     * @dev Emits {AuthorizationUsed} and {Transfer}. Reverts with {AuthorizationNotYetValid},
     * {AuthorizationExpired}, {AuthorizationAlreadyUsed} or {AuthorizationInvalidSigner}.
     */
    function transferWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        _useTransferAuthorization(
            TRANSFER_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, v, r, s
        );
    }

    /**
     * @notice Like {transferWithAuthorization}, but only the payee `to` may submit it, so a
     * signature seen in the mempool cannot be front-run into a call that skips the payee's logic.
     * @dev Emits {AuthorizationUsed} and {Transfer}. Reverts with {AuthorizationCallerNotPayee}
     * and the errors of {transferWithAuthorization}.
     */
    function receiveWithAuthorization(
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) external {
        if (msg.sender != to) {
            revert AuthorizationCallerNotPayee(msg.sender, to);
        }
        _useTransferAuthorization(
            RECEIVE_WITH_AUTHORIZATION_TYPEHASH, from, to, value, validAfter, validBefore, nonce, v, r, s
        );
    }

    /**
     * @notice Burns `authorizer`'s unused `nonce` so no transfer can use it; anyone may submit
     * the authorizer's signed cancellation.
     * @dev Emits {AuthorizationCanceled}. Reverts with {AuthorizationAlreadyUsed} or
     * {AuthorizationInvalidSigner}.
     */
    function cancelAuthorization(address authorizer, bytes32 nonce, uint8 v, bytes32 r, bytes32 s) external {
        _requireUnused(authorizer, nonce);
        _requireSigner(keccak256(abi.encode(CANCEL_AUTHORIZATION_TYPEHASH, authorizer, nonce)), authorizer, v, r, s);
        _authorizationStates[authorizer][nonce] = true;
        emit AuthorizationCanceled(authorizer, nonce);
    }

    /// @notice Whether `authorizer`'s `nonce` has been used or canceled.
    function authorizationState(address authorizer, bytes32 nonce) external view returns (bool) {
        return _authorizationStates[authorizer][nonce];
    }

    function _useTransferAuthorization(
        bytes32 typehash,
        address from,
        address to,
        uint256 value,
        uint256 validAfter,
        uint256 validBefore,
        bytes32 nonce,
        uint8 v,
        bytes32 r,
        bytes32 s
    ) private {
        if (block.timestamp <= validAfter) {
            revert AuthorizationNotYetValid(validAfter);
        }
        if (block.timestamp >= validBefore) {
            revert AuthorizationExpired(validBefore);
        }
        _requireUnused(from, nonce);
        _requireSigner(
            keccak256(abi.encode(typehash, from, to, value, validAfter, validBefore, nonce)), from, v, r, s
        );
        _authorizationStates[from][nonce] = true;
        emit AuthorizationUsed(from, nonce);
        _transfer(from, to, value);
    }

    function _requireUnused(address authorizer, bytes32 nonce) private view {
        if (_authorizationStates[authorizer][nonce]) {
            revert AuthorizationAlreadyUsed(authorizer, nonce);
        }
    }

    function _requireSigner(bytes32 structHash, address expected, uint8 v, bytes32 r, bytes32 s) private view {
        address signer = ECDSA.recover(_hashTypedDataV4(structHash), v, r, s);
        if (signer != expected) {
            revert AuthorizationInvalidSigner(signer, expected);
        }
    }
}
