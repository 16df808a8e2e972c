// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/**
 * @title FeeOnTransferToken
 * @notice Test-only hostile token: every transfer burns a 1% fee, so the receiver gets less than
 * the amount sent. Lets tests prove the escrow measures what it actually received (balance-delta
 * check on pulls) instead of trusting the requested amount.
 * @dev LOCAL USE ONLY. `mint` is open to anyone. The fee rounds up, so every non-zero transfer
 * pays at least one unit and even the smallest pull shows a shortfall.
 */
contract FeeOnTransferToken is ERC20 {
    /// @notice Fee taken on every transfer, in basis points of the amount sent.
    uint256 public constant FEE_BPS = 100;

    uint256 private constant _BPS_DENOMINATOR = 10_000;

    constructor() ERC20("Fee On Transfer USD", "FOTUSD") {}

    /// @notice Six decimals, like USDC, so amounts in tests are the same minor units as in production.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /**
     * @notice Creates `amount` tokens for `to`, fee-free. Anyone may call: test-only token.
     * @dev Emits {Transfer} from the zero address.
     */
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @dev Mints and burns pass through untouched; only account-to-account moves pay the fee,
    /// which is burned (a second {Transfer} to the zero address) so total supply shows it.
    function _update(address from, address to, uint256 value) internal override {
        if (from == address(0) || to == address(0)) {
            super._update(from, to, value);
            return;
        }
        uint256 fee = (value * FEE_BPS + _BPS_DENOMINATOR - 1) / _BPS_DENOMINATOR;
        super._update(from, to, value - fee);
        super._update(from, address(0), fee);
    }
}
