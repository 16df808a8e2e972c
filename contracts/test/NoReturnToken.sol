// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

/**
 * @title NoReturnToken
 * @notice Test-only USDT-like token whose `transfer`, `transferFrom` and `approve` return no
 * value. A caller that decodes a `bool` from them reverts, so tests prove the escrow moves
 * tokens through SafeERC20-style calls that accept an empty return.
 * @dev LOCAL USE ONLY. `mint` is open to anyone. Written without OpenZeppelin's ERC20 on purpose:
 * inheriting it would put `returns (bool)` back into the ABI. Failures revert, as USDT does;
 * an allowance of `type(uint256).max` is never spent down, matching the other test tokens.
 */
contract NoReturnToken {
    string public constant name = "No Return USD";
    string public constant symbol = "NRUSD";
    uint8 public constant decimals = 6;

    uint256 public totalSupply;
    mapping(address account => uint256 amount) public balanceOf;
    mapping(address owner => mapping(address spender => uint256 amount)) public allowance;

    /// @notice Emitted when tokens move, including mints (from the zero address).
    event Transfer(address indexed from, address indexed to, uint256 value);

    /// @notice Emitted when `owner` sets `spender`'s allowance.
    event Approval(address indexed owner, address indexed spender, uint256 value);

    /// @notice `account` holds `balance`, less than the `needed` amount.
    error InsufficientBalance(address account, uint256 balance, uint256 needed);

    /// @notice `spender` may move `allowed` of the owner's tokens, less than the `needed` amount.
    error InsufficientAllowance(address spender, uint256 allowed, uint256 needed);

    /**
     * @notice Creates `amount` tokens for `to`. Anyone may call: test-only token.
     * @dev Emits {Transfer} from the zero address.
     */
    function mint(address to, uint256 amount) external {
        totalSupply += amount;
        balanceOf[to] += amount;
        emit Transfer(address(0), to, amount);
    }

    /**
     * @notice Moves `value` from the caller to `to`; returns nothing.
     * @dev Emits {Transfer}. Reverts with {InsufficientBalance}.
     */
    function transfer(address to, uint256 value) external {
        _move(msg.sender, to, value);
    }

    /**
     * @notice Moves `value` from `from` to `to` against the caller's allowance; returns nothing.
     * @dev Emits {Transfer}. Reverts with {InsufficientAllowance} or {InsufficientBalance}.
     */
    function transferFrom(address from, address to, uint256 value) external {
        uint256 allowed = allowance[from][msg.sender];
        if (allowed != type(uint256).max) {
            if (allowed < value) {
                revert InsufficientAllowance(msg.sender, allowed, value);
            }
            allowance[from][msg.sender] = allowed - value;
        }
        _move(from, to, value);
    }

    /**
     * @notice Lets `spender` move up to `value` of the caller's tokens; returns nothing.
     * @dev Emits {Approval}.
     */
    function approve(address spender, uint256 value) external {
        allowance[msg.sender][spender] = value;
        emit Approval(msg.sender, spender, value);
    }

    function _move(address from, address to, uint256 value) private {
        uint256 balance = balanceOf[from];
        if (balance < value) {
            revert InsufficientBalance(from, balance, value);
        }
        balanceOf[from] = balance - value;
        balanceOf[to] += value;
        emit Transfer(from, to, value);
    }
}
