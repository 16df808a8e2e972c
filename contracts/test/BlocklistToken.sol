// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/**
 * @title BlocklistToken
 * @notice Test-only token with a USDC-style blocklist: any transfer to or from a blocked account
 * reverts. Lets tests prove that one blocked leg (a merchant, a fee receiver, the payer) makes an
 * atomic capture or batch fail as a whole, or is routed to a claimable credit, as designed.
 * @dev LOCAL USE ONLY. `mint` and `setBlocked` are open to anyone. Mints and burns are checked
 * too, as USDC refuses to mint to a blacklisted account.
 */
contract BlocklistToken is ERC20 {
    mapping(address account => bool blocked) public isBlocked;

    /// @notice Emitted when `account` is added to (`blocked` true) or removed from the blocklist.
    event BlockedSet(address indexed account, bool blocked);

    /// @notice A transfer touched `account`, which is on the blocklist.
    error AccountBlocked(address account);

    constructor() ERC20("Blocklist USD", "BLUSD") {}

    /// @notice Six decimals, like USDC, so amounts in tests are the same minor units as in production.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /**
     * @notice Creates `amount` tokens for `to`. Anyone may call: test-only token.
     * @dev Emits {Transfer} from the zero address. Reverts with {AccountBlocked} if `to` is blocked.
     */
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /**
     * @notice Adds `account` to or removes it from the blocklist. Anyone may call: test-only token.
     * @dev Emits {BlockedSet}.
     */
    function setBlocked(address account, bool blocked) external {
        isBlocked[account] = blocked;
        emit BlockedSet(account, blocked);
    }

    function _update(address from, address to, uint256 value) internal override {
        if (isBlocked[from]) {
            revert AccountBlocked(from);
        }
        if (isBlocked[to]) {
            revert AccountBlocked(to);
        }
        super._update(from, to, value);
    }
}
