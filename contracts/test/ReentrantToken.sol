// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";
import {Address} from "@openzeppelin/contracts/utils/Address.sol";

/**
 * @title ReentrantToken
 * @notice Test-only hostile token that calls back into a chosen contract in the middle of a
 * transfer, the way an ERC-777 hook or a malicious token would. Tests arm it with a call into the
 * escrow and prove the escrow's reentrancy guard rejects the re-entry.
 * @dev LOCAL USE ONLY. `mint` and `setHook` are open to anyone. The hook fires once, after the
 * balances have moved, on transfer and transferFrom only (never on mint or burn). It disarms
 * itself before calling so it cannot recurse, and a revert in the call is bubbled up unchanged so
 * a test can assert on the escrow's own error.
 */
contract ReentrantToken is ERC20 {
    address private _hookTarget;
    bytes private _hookData;

    /// @notice How many times the hook fired in transactions that succeeded; a re-entry that
    /// reverted rolls its count back along with everything else.
    uint256 public hookCallCount;

    /// @notice Return data of the last hook call that succeeded.
    bytes public lastHookResult;

    /// @notice Emitted when the hook is armed with a call of `data` to `target`.
    event HookSet(address indexed target, bytes data);

    constructor() ERC20("Reentrant USD", "REUSD") {}

    /// @notice Six decimals, like USDC, so amounts in tests are the same minor units as in production.
    function decimals() public pure override returns (uint8) {
        return 6;
    }

    /**
     * @notice Creates `amount` tokens for `to`, without firing the hook. Anyone may call.
     * @dev Emits {Transfer} from the zero address.
     */
    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /**
     * @notice Arms the hook: the next transfer calls `target` with `data`. A zero `target`
     * disarms it. Anyone may call: test-only token.
     * @dev Emits {HookSet}.
     */
    function setHook(address target, bytes calldata data) external {
        _hookTarget = target;
        _hookData = data;
        emit HookSet(target, data);
    }

    /// @dev Reverts with whatever the hook's target reverted with, or with OpenZeppelin's
    /// `FailedCall` / `AddressEmptyCode` when it gave no reason or has no code.
    function _update(address from, address to, uint256 value) internal override {
        super._update(from, to, value);
        address target = _hookTarget;
        if (target == address(0) || from == address(0) || to == address(0)) {
            return;
        }
        bytes memory data = _hookData;
        delete _hookTarget;
        delete _hookData;
        hookCallCount += 1;
        lastHookResult = Address.functionCall(target, data);
    }
}
