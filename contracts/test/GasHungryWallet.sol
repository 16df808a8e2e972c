// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/**
 * @title GasHungryWallet
 * @notice Test-only smart-wallet payer whose ERC-1271 signature check costs as much gas as a
 * Solidity P-256 passkey verification: it burns a set amount of gas, then accepts exactly its
 * owner's ECDSA signature. Lets tests prove that a payer check starved of gas by the 63/64 rule
 * is not taken for a refused signature.
 * @dev LOCAL USE ONLY. `approve` is open to anyone. The burn is a loop of pure hashing, so its
 * cost does not depend on storage warmth.
 */
contract GasHungryWallet is IERC1271 {
    /// @notice The account whose signatures the wallet accepts.
    address public immutable owner;
    /// @notice Gas the signature check burns before it looks at the signature.
    uint256 public immutable checkGas;

    constructor(address owner_, uint256 checkGas_) {
        owner = owner_;
        checkGas = checkGas_;
    }

    /// @notice Lets `spender` move `amount` of the wallet's `token` (the escrow, to pull a hold).
    function approve(IERC20 token, address spender, uint256 amount) external {
        token.approve(spender, amount);
    }

    /// @notice ERC-1271: burns `checkGas`, then accepts a signature of `hash` by the owner.
    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        // Runs out of gas, as a real verification would, when given less than `checkGas`.
        uint256 start = gasleft();
        bytes32 churn = hash;
        while (start - gasleft() < checkGas) {
            churn = keccak256(abi.encode(churn));
        }
        (address signer,,) = ECDSA.tryRecover(hash, signature);
        // `churn` is read so the optimizer keeps the loop.
        return signer == owner && churn != bytes32(0) ? this.isValidSignature.selector : bytes4(0xffffffff);
    }
}
