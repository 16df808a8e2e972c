// SPDX-License-Identifier: MIT
pragma solidity 0.8.30;

import {IERC20} from "@openzeppelin/contracts/token/ERC20/IERC20.sol";
import {IERC20Permit} from "@openzeppelin/contracts/token/ERC20/extensions/IERC20Permit.sol";
import {SafeERC20} from "@openzeppelin/contracts/token/ERC20/utils/SafeERC20.sol";
import {IERC3009} from "@openzeppelin/contracts/interfaces/draft-IERC3009.sol";
import {AccessControl} from "@openzeppelin/contracts/access/AccessControl.sol";
import {Pausable} from "@openzeppelin/contracts/utils/Pausable.sol";
import {ReentrancyGuardTransient} from "@openzeppelin/contracts/utils/ReentrancyGuardTransient.sol";
import {EIP712} from "@openzeppelin/contracts/utils/cryptography/EIP712.sol";
import {SignatureChecker} from "@openzeppelin/contracts/utils/cryptography/SignatureChecker.sol";

/**
 * @title SettlementEscrow
 * @notice Holds ERC-20 stablecoins for payments and settles them all-or-nothing:
 * hold (authorize) → capture (partial, repeated, split into legs) → refund; or void / reclaim;
 * disputes freeze refundable funds until an arbiter resolves them.
 *
 * Payment terms travel in calldata and are verified by hash: the payment id is the EIP-712
 * typed-data hash of the terms, which is also what the payer signs. Storage holds one slot per
 * payment (capturable, refundable, fee-budget carry, operation sequence).
 *
 * Solvency invariant: token.balanceOf(this) == Σ capturable + Σ frozen (disputes) + Σ credits.
 *
 * Every mutating operation on an existing payment carries the payment's expected operation
 * sequence number, so an operation replayed by an at-least-once relay can never apply twice.
 *
 * Not supported: tokens whose balances change without a transfer (rebasing, interest-bearing)
 * break the solvency invariant, and fee-on-transfer tokens are refused by the pull's
 * balance-delta check. Amounts above AMOUNT_MAX (2^112 - 1) are refused.
 */
contract SettlementEscrow is AccessControl, Pausable, ReentrancyGuardTransient, EIP712 {
    using SafeERC20 for IERC20;

    // ───────────────────────────── types ─────────────────────────────

    /// @notice What the payer agrees to; signed by the payer as EIP-712 typed data.
    struct PaymentTerms {
        address payer;
        address merchant;
        address token;
        uint120 maxAmount;
        uint48 authorizationExpiry; // captures allowed before; payer may reclaim from then on
        uint48 refundExpiry; // refunds allowed before
        uint16 minFeeBps;
        uint16 maxFeeBps; // bounds the fee leg plus every extra leg of a capture
        address feeReceiver;
        address operator; // the only address that may act on this payment
        uint256 salt;
    }

    /// @notice An extra capture leg (ledger or reserve account), paid out of the fee budget.
    struct Leg {
        address recipient;
        uint120 amount;
    }

    /// @notice How an authorization pulls the payer's funds.
    enum Method {
        Allowance, // auth = payer's EIP-712 signature over the terms (empty if payer is caller)
        Permit, // auth = abi.encode(deadline, v, r, s, payerSignature); the permit is for maxAmount
        ERC3009 // auth = abi.encode(validAfter, validBefore, v, r, s); nonce = payment id
    }

    enum Kind {
        Authorize,
        Charge,
        Capture,
        Void,
        Refund
    }

    /// @notice One operation of a batch, decoded from its packed record (see {settleBatch}).
    /// `data` carries what only some kinds need, ABI-encoded: Authorize: (Method, bytes auth);
    /// Charge: (Method, bytes auth, Leg[] legs); Capture: empty, or (Leg[] legs); Refund: empty
    /// (the caller funds it), or (bool merchantFunds); Void: empty.
    struct Record {
        Kind kind;
        uint16 seq; // Capture, Void, Refund: the payment's current operation sequence
        uint16 feeBps; // Charge, Capture
        uint120 amount;
        PaymentTerms terms;
    }

    /// @dev One storage slot per payment, packed by hand (capturable | refundable << 112 |
    /// carry << 224 | seq << 240) so every operation costs exactly one SLOAD and one SSTORE.
    /// `carry` is how far the captures' fees and legs so far went beyond their exact share of
    /// maxFeeBps, in 10⁻⁴ of a token unit (below BPS): what keeps rounding up per capture from
    /// adding up over many captures. `seq` counts applied operations; 0 means unknown.
    struct Payment {
        uint112 capturable;
        uint112 refundable;
        uint16 carry;
        uint16 seq;
    }

    /// @dev `seq` is the sequence the dispute was opened at; `merchantFunded` whether the
    /// freeze counts against the merchant's funding of the payment.
    struct Dispute {
        uint120 amount;
        uint16 seq;
        bool merchantFunded;
        address funder;
    }

    // ─────────────────────────── constants ───────────────────────────

    bytes32 public constant OPERATOR_ROLE = keccak256("OPERATOR_ROLE");
    bytes32 public constant ARBITER_ROLE = keccak256("ARBITER_ROLE");
    bytes32 public constant PAUSER_ROLE = keccak256("PAUSER_ROLE");

    bytes32 public constant PAYMENT_TERMS_TYPEHASH = keccak256(
        "PaymentTerms(address payer,address merchant,address token,uint120 maxAmount,"
        "uint48 authorizationExpiry,uint48 refundExpiry,uint16 minFeeBps,uint16 maxFeeBps,"
        "address feeReceiver,address operator,uint256 salt)"
    );

    uint256 public constant BPS = 10_000;
    /// @notice The largest hold, so that amounts and the fee carry share one storage slot.
    uint256 public constant AMOUNT_MAX = type(uint112).max;
    /// @dev A failed call (an isolated batch operation, a payout's transfer) that left at most
    /// this fraction (1/16) of the gas it was given ran out of gas itself or in a call it made
    /// (each level keeps 1/64 under the 63/64 rule, so starvation three levels deep still
    /// shows): it was not refused. A refusal costs far less than 15/16 of a call's gas unless the
    /// gas was short anyway, and then a retry with more gas gives the refusal.
    uint256 private constant _STARVED_DIVISOR = 16;
    uint256 public constant LEGS_MAX = 4;
    uint256 public constant BATCH_SIZE_MAX = 256;
    /// @dev Bytes of a batch record before its `data`; layout in {settleBatch}.
    uint256 private constant _RECORD_HEAD = 185;

    /// @dev Transient netting table of a batch: the number of distinct (token, recipient)
    /// pairs, the pairs themselves from _NET_PAIRS, and each pair's running total at
    /// keccak256(token, recipient). Transient, so a reverted operation's payouts vanish with it.
    uint256 private constant _NET_COUNT = 0x4d07aa0fd7d02b0080378a0887df1acc5cb30cdd8ea0183eaace481d11427d33; // keccak256("SettlementEscrow.net.count")
    uint256 private constant _NET_PAIRS = 0x678e518502e1b8b78c4e05f57074913c5420756e2b8f48b5502b19e6a0bacb10; // keccak256("SettlementEscrow.net.pairs")

    // ──────────────────────────── storage ────────────────────────────

    mapping(bytes32 paymentId => uint256 packed) private _payments;
    mapping(bytes32 paymentId => Dispute) private _disputes;
    mapping(address token => mapping(address account => uint256)) private _credits;
    /// @dev How much of a merchant's funds (by its token allowance) each spender may still pull
    /// for refunds and disputes. Terms are signed by the payer, not the merchant, so naming a
    /// merchant must not be enough; type(uint256).max is not counted down.
    mapping(address merchant => mapping(address spender => uint256)) private _fundingAllowances;
    /// @dev What the merchant funded of a payment's refunds and open or lost disputes.
    mapping(bytes32 paymentId => uint256) private _merchantFunded;

    // ──────────────────────────── events ─────────────────────────────

    /// @notice A hold was placed; carries the full terms so the indexer needs nothing else.
    event Authorized(bytes32 indexed paymentId, PaymentTerms terms, uint256 amount, Method method);
    /// @notice `amount` left the hold: `fee` to the fee receiver, the {LegPaid} amounts to extra
    /// legs, the rest to the merchant. `seq` is the operation's sequence number (the authorization is 0).
    event Captured(bytes32 indexed paymentId, uint16 seq, uint256 amount, uint256 fee);
    event LegPaid(bytes32 indexed paymentId, address indexed recipient, uint256 amount);
    event Voided(bytes32 indexed paymentId, uint16 seq, uint256 amount);
    event Reclaimed(bytes32 indexed paymentId, uint16 seq, uint256 amount);
    event Refunded(bytes32 indexed paymentId, uint16 seq, uint256 amount, address funder);
    event DisputeOpened(bytes32 indexed paymentId, uint16 seq, uint256 amount, address funder);
    event DisputeResolved(bytes32 indexed paymentId, uint16 seq, uint256 amount, bool payerWins);
    /// @notice A non-atomic batch skipped operation `index`; `reason` is the revert data.
    event OperationFailed(bytes32 indexed paymentId, uint256 index, bytes reason);
    /// @notice A payout could not be pushed (e.g. a blocklisting token) and awaits withdrawal.
    event Credited(address indexed token, address indexed account, uint256 amount);
    /// @notice `account` withdrew its credits; `to` is always `account`.
    event Withdrawn(address indexed token, address indexed account, address to, uint256 amount);
    /// @notice `merchant` let `spender` pull up to `cap` of its funds for refunds and disputes.
    event FundingApproved(address indexed merchant, address indexed spender, uint256 cap);

    // ──────────────────────────── errors ─────────────────────────────

    error ZeroAddress();
    error InvalidRecipient(address recipient);
    error ZeroAmount();
    error InvalidExpiries(uint48 authorizationExpiry, uint48 refundExpiry);
    error InvalidFeeBounds(uint16 minFeeBps, uint16 maxFeeBps);
    error NotOperator(address caller, address operator);
    error NotPayer(address caller, address payer);
    error PaymentExists(bytes32 paymentId);
    error PaymentNotFound(bytes32 paymentId);
    error StaleSequence(bytes32 paymentId, uint16 current, uint16 given);
    error AuthorizationExpired(uint48 authorizationExpiry, uint256 timestamp);
    error AuthorizationNotExpired(uint48 authorizationExpiry, uint256 timestamp);
    error RefundWindowClosed(uint48 refundExpiry, uint256 timestamp);
    error AmountExceedsMax(uint256 amount, uint256 maxAmount);
    error AmountExceedsCapturable(uint256 amount, uint256 capturable);
    error AmountExceedsRefundable(uint256 amount, uint256 refundable);
    error FeeOutOfBounds(uint16 feeBps, uint16 minFeeBps, uint16 maxFeeBps);
    error TooManyLegs(uint256 count, uint256 max);
    error InvalidLeg(uint256 index);
    error FeeBudgetExceeded(uint256 total, uint256 budget);
    error InvalidPayerSignature(bytes32 paymentId, address payer);
    error ShortPull(address token, uint256 expected, uint256 received);
    error DisputeAlreadyOpen(bytes32 paymentId);
    error NoOpenDispute(bytes32 paymentId);
    error EmptyBatch();
    error MalformedBatch(uint256 offset);
    error BatchTooLarge(uint256 size, uint256 max);
    error BatchOutOfGas(uint256 index);
    error OnlySelf();
    error NothingToWithdraw(address token, address account);
    error FundingAllowanceExceeded(address merchant, address spender, uint256 amount, uint256 allowance);
    error MerchantFundingExceeded(bytes32 paymentId, uint256 funded, uint256 bound);
    error SequenceExhausted(bytes32 paymentId);
    error PayoutOutOfGas(address token, address to);

    // ────────────────────────── construction ─────────────────────────

    /// @param admin receives DEFAULT_ADMIN_ROLE and grants the operator, arbiter and pauser roles.
    constructor(address admin) EIP712("SettlementEscrow", "1") {
        if (admin == address(0)) revert ZeroAddress();
        _grantRole(DEFAULT_ADMIN_ROLE, admin);
    }

    // ─────────────────────── payment operations ──────────────────────

    /**
     * @notice Places a hold of `amount` (≤ terms.maxAmount and ≤ AMOUNT_MAX) by pulling it from
     * the payer.
     * @dev Caller: terms.operator, holding OPERATOR_ROLE; not while paused.
     * Emits {Authorized}. Reverts with PaymentExists, AuthorizationExpired, AmountExceedsMax,
     * InvalidExpiries, InvalidFeeBounds, InvalidPayerSignature, ShortPull, NotOperator,
     * ZeroAddress, InvalidRecipient (the escrow as merchant or fee receiver), EnforcedPause.
     * @return id the EIP-712 hash of `terms`.
     */
    function authorize(PaymentTerms memory terms, uint256 amount, Method method, bytes memory auth)
        external
        nonReentrant
        onlyRole(OPERATOR_ROLE)
        returns (bytes32 id)
    {
        id = _authorize(terms, amount, method, auth, msg.sender);
    }

    /**
     * @notice Authorize and capture `amount` in one call (a sale with immediate settlement).
     * @dev Caller and reverts: as {authorize} and {capture}. Emits {Authorized}, {Captured},
     * and {LegPaid} per leg.
     */
    function charge(
        PaymentTerms memory terms,
        uint256 amount,
        Method method,
        bytes memory auth,
        uint16 feeBps,
        Leg[] memory legs
    ) external nonReentrant onlyRole(OPERATOR_ROLE) returns (bytes32 id) {
        id = _authorize(terms, amount, method, auth, msg.sender);
        _capture(id, terms, 1, amount, feeBps, legs, msg.sender, false);
    }

    /**
     * @notice Captures `amount` of the hold, split atomically: the fee to the fee receiver, `legs`
     * to extra accounts, the rest to the merchant. The fee is ceil(amount·feeBps/10⁴), less the
     * one unit rounding up may add when that unit would break the payment's fee budget.
     * @dev Caller: terms.operator, holding OPERATOR_ROLE (revoking it stops the operator's
     * captures at once). Only before the authorization expiry; feeBps within the payer-signed
     * bounds. The fee budget is kept on the
     * payment's running totals: over all its captures, fees plus legs never exceed
     * ceil(total captured·maxFeeBps/10⁴), and, at one feeBps, the fees are never less than
     * ceil(total captured·feeBps/10⁴) however the captures are split.
     * Emits {Captured} and {LegPaid} per leg. Reverts with
     * PaymentNotFound, StaleSequence, SequenceExhausted, AuthorizationExpired,
     * AmountExceedsCapturable, FeeOutOfBounds, TooManyLegs, InvalidLeg, FeeBudgetExceeded,
     * NotOperator, ZeroAmount, AccessControlUnauthorizedAccount, PayoutOutOfGas.
     */
    function capture(PaymentTerms calldata terms, uint16 seq, uint256 amount, uint16 feeBps, Leg[] memory legs)
        external
        nonReentrant
        onlyRole(OPERATOR_ROLE)
    {
        PaymentTerms memory t = _termsFromCalldata(terms);
        _capture(_paymentId(t), t, seq, amount, feeBps, legs, msg.sender, false);
    }

    /// @dev The terms copied word for word, unchecked: they are only used under the payment id
    /// they hash to, and a word that is not canonical ABI hashes to a payment that was never
    /// authorized ({authorize} decodes its terms with every check), so the operation reverts
    /// with PaymentNotFound.
    function _termsFromCalldata(PaymentTerms calldata terms) private pure returns (PaymentTerms memory t) {
        assembly ("memory-safe") {
            calldatacopy(t, terms, 0x160)
        }
    }

    /**
     * @notice Releases `amount` of the hold back to the payer (full or partial void).
     * @dev Caller: terms.operator, holding OPERATOR_ROLE; also while paused (it only returns
     * money to the payer). Emits {Voided}. Reverts with PaymentNotFound, StaleSequence,
     * SequenceExhausted, AmountExceedsCapturable, NotOperator, ZeroAmount,
     * AccessControlUnauthorizedAccount, PayoutOutOfGas.
     */
    function void(PaymentTerms memory terms, uint16 seq, uint256 amount)
        external
        nonReentrant
        onlyRole(OPERATOR_ROLE)
    {
        _void(_paymentId(terms), terms, seq, amount, msg.sender, false);
    }

    /**
     * @notice Returns the whole remaining hold to the payer once the authorization expired.
     * @dev Caller: terms.payer. Works while paused, whatever the operator's role, and at the
     * sequence cap: a payer's exit never depends on operators. Emits {Reclaimed}. Reverts with
     * NotPayer, PaymentNotFound, AuthorizationNotExpired, ZeroAmount, PayoutOutOfGas.
     */
    function reclaim(PaymentTerms memory terms) external nonReentrant {
        if (msg.sender != terms.payer) revert NotPayer(msg.sender, terms.payer);
        bytes32 id = _paymentId(terms);
        Payment memory p = _existing(id);
        if (block.timestamp < terms.authorizationExpiry) {
            revert AuthorizationNotExpired(terms.authorizationExpiry, block.timestamp);
        }
        if (p.capturable == 0) revert ZeroAmount();
        _store(id, 0, p.refundable, p.carry, _saturatingNext(p.seq));
        emit Reclaimed(id, p.seq, p.capturable);
        _push(terms.token, terms.payer, p.capturable);
    }

    /**
     * @notice Refunds `amount` of what was captured to the payer, funded by the caller or, with
     * `merchantFunds`, by the merchant's token allowance to this escrow. The merchant funds at
     * most what it approved the caller for ({approveFunding}) and, per payment, at most its
     * share net of the largest fee the payer allowed: its refunds and disputes funded together
     * never exceed floor((refundable + merchant funded)·(10⁴ − maxFeeBps)/10⁴), which is never
     * more than it was paid for the payment (net of fee and legs).
     * @dev Caller: terms.operator, holding OPERATOR_ROLE; a merchant-funded refund not while
     * paused. Only before the refund expiry. Emits {Refunded}. Reverts with PaymentNotFound,
     * StaleSequence, SequenceExhausted, RefundWindowClosed, AmountExceedsRefundable, ShortPull,
     * NotOperator, ZeroAmount, FundingAllowanceExceeded, MerchantFundingExceeded,
     * AccessControlUnauthorizedAccount, EnforcedPause, PayoutOutOfGas.
     */
    function refund(PaymentTerms memory terms, uint16 seq, uint256 amount, bool merchantFunds)
        external
        nonReentrant
        onlyRole(OPERATOR_ROLE)
    {
        _refund(_paymentId(terms), terms, seq, amount, merchantFunds, msg.sender, false);
    }

    /**
     * @notice Freezes `amount` of the refundable funds in the escrow while a dispute is open,
     * pulling it from the caller or, with `merchantFunds`, from the merchant, within the same
     * bounds as a merchant-funded {refund}.
     * @dev Caller: ARBITER_ROLE. One open dispute per payment; works while paused. Emits
     * {DisputeOpened}. Reverts with PaymentNotFound, StaleSequence, SequenceExhausted,
     * DisputeAlreadyOpen, AmountExceedsRefundable, ShortPull, ZeroAmount,
     * FundingAllowanceExceeded, MerchantFundingExceeded.
     */
    function openDispute(PaymentTerms memory terms, uint16 seq, uint256 amount, bool merchantFunds)
        external
        nonReentrant
        onlyRole(ARBITER_ROLE)
    {
        bytes32 id = _paymentId(terms);
        Payment memory p = _sequenced(id, seq);
        if (_disputes[id].amount != 0) revert DisputeAlreadyOpen(id);
        if (amount == 0) revert ZeroAmount();
        if (amount > p.refundable) revert AmountExceedsRefundable(amount, p.refundable);
        address funder = merchantFunds ? _fundByMerchant(id, terms, p, amount, msg.sender) : msg.sender;
        _store(id, p.capturable, p.refundable - uint112(amount), p.carry, seq + 1);
        _disputes[id] = Dispute(uint120(amount), seq, merchantFunds, funder);
        emit DisputeOpened(id, seq, amount, funder);
        _pull(terms.token, funder, amount);
    }

    /**
     * @notice Resolves the open dispute: the frozen funds go to the payer, or back to whoever
     * funded the freeze (and become refundable again; a merchant repaid may fund again).
     * @dev Caller: ARBITER_ROLE. `seq` is any sequence of the payment from the one after the
     * dispute's opening to the current one, so operator operations while the dispute is open
     * cannot make the call stale, while a replay finds the dispute resolved (NoOpenDispute) and
     * a call meant for an earlier dispute is stale. Works while paused and at the sequence cap
     * (the sequence then stays at the cap). Emits {DisputeResolved} with the payment's current
     * sequence. Reverts with PaymentNotFound, NoOpenDispute, StaleSequence, PayoutOutOfGas.
     */
    function resolveDispute(PaymentTerms memory terms, uint16 seq, bool payerWins)
        external
        nonReentrant
        onlyRole(ARBITER_ROLE)
    {
        bytes32 id = _paymentId(terms);
        Payment memory p = _existing(id);
        Dispute memory d = _disputes[id];
        if (d.amount == 0) revert NoOpenDispute(id);
        if (seq <= d.seq || seq > p.seq) revert StaleSequence(id, p.seq, seq);
        delete _disputes[id];
        uint112 refundable = p.refundable;
        if (!payerWins) {
            refundable += uint112(d.amount);
            if (d.merchantFunded) _merchantFunded[id] -= d.amount;
        }
        _store(id, p.capturable, refundable, p.carry, _saturatingNext(p.seq));
        emit DisputeResolved(id, p.seq, d.amount, payerWins);
        _push(terms.token, payerWins ? terms.payer : d.funder, d.amount);
    }

    /**
     * @notice Applies a batch of operations. Atomic: every operation applies or the whole call
     * reverts with the first failure. Non-atomic: each operation applies independently and a
     * failed one emits {OperationFailed}. Payouts to the same (token, recipient) are netted into
     * one transfer.
     * @dev `ops` is a concatenation of packed records, big-endian, unpadded — about a quarter of
     * the calldata of ABI-encoded structs, which is most of a batched operation's cost:
     *   kind u8 | seq u16 | feeBps u16 | amount u120 |
     *   payer, merchant, token (20 bytes each) | maxAmount u120 | authorizationExpiry u48 |
     *   refundExpiry u48 | minFeeBps u16 | maxFeeBps u16 | feeReceiver, operator (20 bytes each) |
     *   salt u256 | dataLength u16 | data (dataLength bytes; see {Record})
     * Caller: OPERATOR_ROLE, and terms.operator of every operation.
     * Reverts with EmptyBatch, BatchTooLarge, MalformedBatch, BatchOutOfGas (non-atomic: operation
     * `index` failed having used all but 1/16 of the gas left for it, i.e. it or a call it made —
     * the payer wallet's signature check, the token, a permit — ran out of gas; a retry with more
     * gas, e.g. under an estimate, applies or refuses it for its own reasons), PayoutOutOfGas
     * (a netted payout ran out of gas), or (atomic) any error of the operations (a record whose
     * `data` is not valid ABI for its kind fails with empty revert data).
     */
    function settleBatch(bytes calldata ops, bool atomic) external nonReentrant onlyRole(OPERATOR_ROLE) {
        if (ops.length == 0) revert EmptyBatch();
        Record memory r;
        uint256 index;
        for (uint256 at; at < ops.length; ++index) {
            if (index == BATCH_SIZE_MAX) revert BatchTooLarge(index + 1, BATCH_SIZE_MAX);
            (bytes calldata data, uint256 next) = _readRecord(ops, at, r);
            if (atomic) {
                _apply(r, data, msg.sender);
            } else {
                uint256 gasBefore = gasleft();
                try this.applyIsolated(ops[at:next], msg.sender) {}
                catch (bytes memory reason) {
                    // A call starved of gas leaves its caller at most 1/64 of the gas, at any
                    // depth (the payer's ERC-1271 check, the token inside the operation).
                    // Such a failure says nothing about the operation, so the whole batch
                    // reverts rather than log it as refused; a retry with more gas decides.
                    if (gasleft() <= gasBefore / _STARVED_DIVISOR) revert BatchOutOfGas(index);
                    emit OperationFailed(_paymentId(r.terms), index, reason);
                }
            }
            at = next;
        }
        _flushNetted();
    }

    /**
     * @notice Applies one record of a non-atomic batch in its own call frame, so that a failure
     * rolls back exactly that operation, its netted payouts included.
     * @dev Caller: this contract only (from {settleBatch}). Reverts with OnlySelf.
     */
    function applyIsolated(bytes calldata record, address sender) external {
        if (msg.sender != address(this)) revert OnlySelf();
        Record memory r;
        (bytes calldata data,) = _readRecord(record, 0, r);
        _apply(r, data, sender);
    }

    /**
     * @notice Pays the caller its credits of `token` (payouts that could not be pushed), to the
     * credited account itself only: a credit kept because a token refused the account (a
     * blocklist) cannot be moved to another address.
     * @dev Caller: the credited account. Emits {Withdrawn}. Reverts with NothingToWithdraw or,
     * when the token refuses the transfer, the token's own error (SafeERC20FailedOperation if it
     * just returns false); the credit then stays.
     */
    function withdraw(address token) external nonReentrant {
        uint256 amount = _credits[token][msg.sender];
        if (amount == 0) revert NothingToWithdraw(token, msg.sender);
        _credits[token][msg.sender] = 0;
        emit Withdrawn(token, msg.sender, msg.sender, amount);
        IERC20(token).safeTransfer(msg.sender, amount);
    }

    /**
     * @notice Lets `spender` (an operator, the arbiter) pull up to `cap` of the caller's funds,
     * from the caller's token allowance to this escrow, for refunds and disputes of the caller's
     * payments (the `merchantFunds` option); each pull counts down the cap, except a cap of
     * type(uint256).max. A cap of 0 withdraws the approval.
     * @dev Caller: a merchant. Emits {FundingApproved}.
     */
    function approveFunding(address spender, uint256 cap) external {
        _fundingAllowances[msg.sender][spender] = cap;
        emit FundingApproved(msg.sender, spender, cap);
    }

    /**
     * @notice Stops new holds and the pulls of merchants' funds: authorizations, charges and
     * merchant-funded refunds. Captures, voids, refunds the operator funds, reclaims, disputes
     * and withdrawals go on. The lever against a compromised operator key is the admin's
     * revokeRole(OPERATOR_ROLE, key): every operator operation (capture, void, refund, batch)
     * checks the caller's role, so it stops them at once, while payers still reclaim.
     * @dev Caller: PAUSER_ROLE. Emits {Paused}.
     */
    function pause() external onlyRole(PAUSER_ROLE) {
        _pause();
    }

    /// @notice Resumes what {pause} stopped. Caller: PAUSER_ROLE. Emits {Unpaused}.
    function unpause() external onlyRole(PAUSER_ROLE) {
        _unpause();
    }

    // ───────────────────────────── views ─────────────────────────────

    /// @notice The payment id of `terms`: its EIP-712 typed-data hash, which the payer signs.
    function paymentId(PaymentTerms memory terms) external view returns (bytes32) {
        return _paymentId(terms);
    }

    /// @notice The payment's state: what can still be captured, refunded, and its sequence.
    function payments(bytes32 id) external view returns (uint120 capturable, uint120 refundable, uint16 seq) {
        Payment memory p = _load(id);
        return (p.capturable, p.refundable, p.seq);
    }

    /// @notice The open dispute of a payment (amount 0 when none).
    function disputes(bytes32 id) external view returns (uint120 amount, address funder) {
        Dispute memory d = _disputes[id];
        return (d.amount, d.funder);
    }

    /// @notice How much of `merchant`'s funds `spender` may still pull for refunds and disputes.
    function fundingAllowance(address merchant, address spender) external view returns (uint256) {
        return _fundingAllowances[merchant][spender];
    }

    /// @notice What the merchant funded of the payment's refunds and open or lost disputes.
    function merchantFunded(bytes32 id) external view returns (uint256) {
        return _merchantFunded[id];
    }

    /// @notice Payouts of `token` owed to `account` that could not be pushed.
    function credits(address token, address account) external view returns (uint256) {
        return _credits[token][account];
    }

    // ─────────────────────────── internals ───────────────────────────

    function _apply(Record memory r, bytes calldata data, address sender) internal {
        Kind kind = r.kind;
        if (kind == Kind.Capture) {
            Leg[] memory legs = data.length == 0 ? new Leg[](0) : abi.decode(data, (Leg[]));
            _capture(_paymentId(r.terms), r.terms, r.seq, r.amount, r.feeBps, legs, sender, true);
        } else if (kind == Kind.Void) {
            _void(_paymentId(r.terms), r.terms, r.seq, r.amount, sender, true);
        } else if (kind == Kind.Refund) {
            bool merchantFunds = data.length != 0 && abi.decode(data, (bool));
            _refund(_paymentId(r.terms), r.terms, r.seq, r.amount, merchantFunds, sender, true);
        } else if (kind == Kind.Authorize) {
            (Method method, bytes memory auth) = abi.decode(data, (Method, bytes));
            _authorize(r.terms, r.amount, method, auth, sender);
        } else {
            (Method method, bytes memory auth, Leg[] memory legs) = abi.decode(data, (Method, bytes, Leg[]));
            bytes32 id = _authorize(r.terms, r.amount, method, auth, sender);
            _capture(id, r.terms, 1, r.amount, r.feeBps, legs, sender, true);
        }
    }

    /// @dev Decodes the record at `at` into `r` (reusing its memory) and returns its `data`
    /// and where the next record starts. Layout: see {settleBatch}.
    function _readRecord(bytes calldata ops, uint256 at, Record memory r)
        private
        pure
        returns (bytes calldata data, uint256 next)
    {
        if (ops.length < at + _RECORD_HEAD) revert MalformedBatch(at);
        PaymentTerms memory t = r.terms;
        uint256 kind;
        uint256 dataLength;
        assembly ("memory-safe") {
            let p := add(ops.offset, at)
            let head := calldataload(p)
            kind := shr(248, head)
            mstore(add(r, 0x20), and(shr(232, head), 0xffff))
            mstore(add(r, 0x40), and(shr(216, head), 0xffff))
            mstore(add(r, 0x60), and(shr(96, head), 0xffffffffffffffffffffffffffffff))
            mstore(t, shr(96, calldataload(add(p, 20))))
            mstore(add(t, 0x20), shr(96, calldataload(add(p, 40))))
            mstore(add(t, 0x40), shr(96, calldataload(add(p, 60))))
            mstore(add(t, 0x60), shr(136, calldataload(add(p, 80))))
            mstore(add(t, 0x80), shr(208, calldataload(add(p, 95))))
            mstore(add(t, 0xa0), shr(208, calldataload(add(p, 101))))
            mstore(add(t, 0xc0), shr(240, calldataload(add(p, 107))))
            mstore(add(t, 0xe0), shr(240, calldataload(add(p, 109))))
            mstore(add(t, 0x100), shr(96, calldataload(add(p, 111))))
            mstore(add(t, 0x120), shr(96, calldataload(add(p, 131))))
            mstore(add(t, 0x140), calldataload(add(p, 151)))
            dataLength := shr(240, calldataload(add(p, 183)))
        }
        if (kind > uint256(type(Kind).max)) revert MalformedBatch(at);
        r.kind = Kind(kind);
        next = at + _RECORD_HEAD + dataLength;
        if (next > ops.length) revert MalformedBatch(at);
        data = ops[at + _RECORD_HEAD:next];
    }

    function _authorize(
        PaymentTerms memory t,
        uint256 amount,
        Method method,
        bytes memory auth,
        address sender
    ) internal returns (bytes32 id) {
        _requireNotPaused();
        if (sender != t.operator) revert NotOperator(sender, t.operator);
        if (t.payer == address(0) || t.merchant == address(0) || t.token == address(0)) revert ZeroAddress();
        // Funds paid to the escrow itself would be owed to no one: a recipient must be outside.
        if (t.merchant == address(this) || t.feeReceiver == address(this)) revert InvalidRecipient(address(this));
        if (t.authorizationExpiry > t.refundExpiry) revert InvalidExpiries(t.authorizationExpiry, t.refundExpiry);
        if (t.minFeeBps > t.maxFeeBps || t.maxFeeBps > BPS || (t.feeReceiver == address(0) && t.maxFeeBps != 0)) {
            revert InvalidFeeBounds(t.minFeeBps, t.maxFeeBps);
        }
        if (block.timestamp >= t.authorizationExpiry) revert AuthorizationExpired(t.authorizationExpiry, block.timestamp);
        if (amount == 0) revert ZeroAmount();
        if (amount > t.maxAmount) revert AmountExceedsMax(amount, t.maxAmount);
        if (amount > AMOUNT_MAX) revert AmountExceedsMax(amount, AMOUNT_MAX);
        id = _paymentId(t);
        if (_load(id).seq != 0) revert PaymentExists(id);

        _store(id, uint112(amount), 0, 0, 1);
        emit Authorized(id, t, amount, method);
        _collect(id, t, amount, method, auth, sender);
    }

    /// @dev Pulls the hold from the payer by the chosen method, then checks the balance delta.
    function _collect(
        bytes32 id,
        PaymentTerms memory t,
        uint256 amount,
        Method method,
        bytes memory auth,
        address sender
    ) private {
        uint256 before = IERC20(t.token).balanceOf(address(this));
        if (method == Method.ERC3009) {
            _receiveWithAuthorization(t.token, t.payer, amount, id, auth);
        } else {
            bytes memory payerSignature = method == Method.Permit ? _permit(t, auth) : auth;
            if (sender != t.payer && !SignatureChecker.isValidSignatureNow(t.payer, id, payerSignature)) {
                revert InvalidPayerSignature(id, t.payer);
            }
            IERC20(t.token).safeTransferFrom(t.payer, address(this), amount);
        }
        _checkReceived(t.token, before, amount);
    }

    /// @dev The payer signed the payment id as the ERC-3009 nonce: that binds the terms.
    function _receiveWithAuthorization(address token, address payer, uint256 amount, bytes32 id, bytes memory auth)
        private
    {
        (uint256 validAfter, uint256 validBefore, uint8 v, bytes32 r, bytes32 s) =
            abi.decode(auth, (uint256, uint256, uint8, bytes32, bytes32));
        IERC3009(token).receiveWithAuthorization(payer, address(this), amount, validAfter, validBefore, id, v, r, s);
    }

    /// @dev Submits the payer's EIP-2612 permit for maxAmount and returns the payer's terms
    /// signature. A permit that fails (e.g. front-run, so the allowance is already there) is
    /// ignored: the pull that follows decides.
    function _permit(PaymentTerms memory t, bytes memory auth) private returns (bytes memory payerSignature) {
        uint256 deadline;
        uint8 v;
        bytes32 r;
        bytes32 s;
        (deadline, v, r, s, payerSignature) = abi.decode(auth, (uint256, uint8, bytes32, bytes32, bytes));
        try IERC20Permit(t.token).permit(t.payer, address(this), t.maxAmount, deadline, v, r, s) {} catch {}
    }

    function _capture(
        bytes32 id,
        PaymentTerms memory t,
        uint16 seq,
        uint256 amount,
        uint16 feeBps,
        Leg[] memory legs,
        address sender,
        bool net
    ) internal {
        if (sender != t.operator) revert NotOperator(sender, t.operator);
        Payment memory p = _sequenced(id, seq);
        if (block.timestamp >= t.authorizationExpiry) revert AuthorizationExpired(t.authorizationExpiry, block.timestamp);
        if (amount == 0) revert ZeroAmount();
        if (amount > p.capturable) revert AmountExceedsCapturable(amount, p.capturable);
        if (feeBps < t.minFeeBps || feeBps > t.maxFeeBps) revert FeeOutOfBounds(feeBps, t.minFeeBps, t.maxFeeBps);
        if (legs.length > LEGS_MAX) revert TooManyLegs(legs.length, LEGS_MAX);

        // Unchecked: amount ≤ capturable ≤ AMOUNT_MAX < 2^112, bps ≤ 10⁴ and carry < 10⁴, so no
        // product or sum below can overflow, the budget's numerator is positive, and the budget
        // check keeps the merchant's net non-negative.
        unchecked {
            uint256 extra;
            for (uint256 i; i < legs.length; ++i) {
                address recipient = legs[i].recipient;
                if (recipient == address(0) || recipient == address(this) || legs[i].amount == 0) {
                    revert InvalidLeg(i);
                }
                extra += legs[i].amount;
            }
            // This capture's share of maxFeeBps, rounded up, less what earlier captures' rounding
            // already took: over all captures fee plus legs stay ≤ ceil(captured·maxFeeBps/10⁴).
            uint256 share = amount * t.maxFeeBps;
            uint256 budget = (share + BPS - 1 - p.carry) / BPS;
            uint256 fee = _ceilBps(amount, feeBps);
            // Rounding up adds at most one unit; where that unit is beyond the budget, it goes.
            if (fee > budget) fee = budget;
            uint256 taken = fee + extra;
            if (taken > budget) revert FeeBudgetExceeded(taken, budget);
            // < BPS by the budget check; a capture that took less than its share starts afresh.
            uint256 over = p.carry + taken * BPS;
            uint16 carry = over > share ? uint16(over - share) : 0;

            _store(id, p.capturable - uint112(amount), p.refundable + uint112(amount), carry, seq + 1);
            emit Captured(id, seq, amount, fee);
            _pay(net, t.token, t.merchant, amount - taken);
            _pay(net, t.token, t.feeReceiver, fee);
        }
        for (uint256 i; i < legs.length; ++i) {
            emit LegPaid(id, legs[i].recipient, legs[i].amount);
            _pay(net, t.token, legs[i].recipient, legs[i].amount);
        }
    }

    function _void(bytes32 id, PaymentTerms memory t, uint16 seq, uint256 amount, address sender, bool net)
        internal
    {
        if (sender != t.operator) revert NotOperator(sender, t.operator);
        Payment memory p = _sequenced(id, seq);
        if (amount == 0) revert ZeroAmount();
        if (amount > p.capturable) revert AmountExceedsCapturable(amount, p.capturable);
        _store(id, p.capturable - uint112(amount), p.refundable, p.carry, seq + 1);
        emit Voided(id, seq, amount);
        _pay(net, t.token, t.payer, amount);
    }

    function _refund(
        bytes32 id,
        PaymentTerms memory t,
        uint16 seq,
        uint256 amount,
        bool merchantFunds,
        address sender,
        bool net
    ) internal {
        if (sender != t.operator) revert NotOperator(sender, t.operator);
        Payment memory p = _sequenced(id, seq);
        if (block.timestamp >= t.refundExpiry) revert RefundWindowClosed(t.refundExpiry, block.timestamp);
        if (amount == 0) revert ZeroAmount();
        if (amount > p.refundable) revert AmountExceedsRefundable(amount, p.refundable);
        address funder = sender;
        if (merchantFunds) {
            _requireNotPaused();
            funder = _fundByMerchant(id, t, p, amount, sender);
        }
        _store(id, p.capturable, p.refundable - uint112(amount), p.carry, seq + 1);
        emit Refunded(id, seq, amount, funder);
        _pull(t.token, funder, amount);
        _pay(net, t.token, t.payer, amount);
    }

    /// @dev Counts `amount` of merchant funding of payment `id` pulled by `spender` against the
    /// merchant's cap for that spender and against the payment's bound, and returns the
    /// merchant. The bound: refundable plus what the merchant funded is at most what was
    /// captured (net of others' refunds and freezes), and fees plus legs took at most
    /// ceil(captured·maxFeeBps/10⁴) of it, so the merchant was paid at least the bound's share.
    function _fundByMerchant(bytes32 id, PaymentTerms memory t, Payment memory p, uint256 amount, address spender)
        private
        returns (address)
    {
        uint256 allowance = _fundingAllowances[t.merchant][spender];
        if (amount > allowance) revert FundingAllowanceExceeded(t.merchant, spender, amount, allowance);
        if (allowance != type(uint256).max) _fundingAllowances[t.merchant][spender] = allowance - amount;
        uint256 before = _merchantFunded[id];
        uint256 bound = (p.refundable + before) * (BPS - t.maxFeeBps) / BPS;
        uint256 funded = before + amount;
        if (funded > bound) revert MerchantFundingExceeded(id, funded, bound);
        _merchantFunded[id] = funded;
        return t.merchant;
    }

    /// @dev Loads a payment that must exist, be at sequence `seq` (replay protection) and have a
    /// sequence left for the operation about to apply.
    function _sequenced(bytes32 id, uint16 seq) private view returns (Payment memory p) {
        p = _existing(id);
        if (p.seq != seq) revert StaleSequence(id, p.seq, seq);
        if (seq == type(uint16).max) revert SequenceExhausted(id);
    }

    function _load(bytes32 id) private view returns (Payment memory) {
        uint256 word = _payments[id];
        return Payment(uint112(word), uint112(word >> 112), uint16(word >> 224), uint16(word >> 240));
    }

    /// @dev Takes the fields, not a Payment: no memory is allocated on the hot path.
    function _store(bytes32 id, uint112 capturable, uint112 refundable, uint16 carry, uint16 seq) private {
        _payments[id] = uint256(capturable) | (uint256(refundable) << 112) | (uint256(carry) << 224)
            | (uint256(seq) << 240);
    }

    /// @dev The sequence after `seq`, staying at the cap: for what must work however many
    /// operations the operator made (reclaim, resolving a dispute).
    function _saturatingNext(uint16 seq) private pure returns (uint16) {
        return seq == type(uint16).max ? seq : seq + 1;
    }

    function _existing(bytes32 id) private view returns (Payment memory p) {
        p = _load(id);
        if (p.seq == 0) revert PaymentNotFound(id);
    }

    /// @dev The terms are eleven static words in memory, so the struct hash is
    /// keccak256(typehash ‖ those words) with no re-encoding.
    function _paymentId(PaymentTerms memory t) private view returns (bytes32) {
        bytes32 typehash = PAYMENT_TERMS_TYPEHASH;
        bytes32 structHash;
        assembly ("memory-safe") {
            let m := mload(0x40)
            mstore(m, typehash)
            mcopy(add(m, 0x20), t, 0x160)
            structHash := keccak256(m, 0x180)
        }
        return _hashTypedDataV4(structHash);
    }

    /// @dev Rounds up, so a non-zero amount at non-zero bps always pays at least one unit and
    /// splitting a capture can never round the fee away.
    function _ceilBps(uint256 amount, uint256 bps) private pure returns (uint256) {
        return (amount * bps + BPS - 1) / BPS;
    }

    /// @dev Pulls `amount` from `from` and rejects short or fee-on-transfer pulls.
    function _pull(address token, address from, uint256 amount) private {
        uint256 before = IERC20(token).balanceOf(address(this));
        IERC20(token).safeTransferFrom(from, address(this), amount);
        _checkReceived(token, before, amount);
    }

    function _checkReceived(address token, uint256 before, uint256 amount) private view {
        uint256 received = IERC20(token).balanceOf(address(this)) - before;
        if (received != amount) revert ShortPull(token, amount, received);
    }

    /// @dev Pays now, or (in a batch) adds to the transient netting table for {_flushNetted}.
    function _pay(bool net, address token, address to, uint256 amount) private {
        if (amount == 0) return;
        if (!net) return _push(token, to, amount);
        assembly ("memory-safe") {
            mstore(0x00, token)
            mstore(0x20, to)
            let key := keccak256(0x00, 0x40)
            let total := tload(key)
            if iszero(total) {
                let count := tload(_NET_COUNT)
                let at := add(_NET_PAIRS, shl(1, count))
                tstore(at, token)
                tstore(add(at, 1), to)
                tstore(_NET_COUNT, add(count, 1))
            }
            // Cannot overflow: every total is bounded by token balances held by this escrow.
            tstore(key, add(total, amount))
        }
    }

    /// @dev Sends one transfer per distinct (token, recipient) of the batch and clears the table.
    function _flushNetted() private {
        uint256 count;
        assembly ("memory-safe") {
            count := tload(_NET_COUNT)
            tstore(_NET_COUNT, 0)
        }
        for (uint256 i; i < count; ++i) {
            address token;
            address to;
            uint256 amount;
            assembly ("memory-safe") {
                let at := add(_NET_PAIRS, shl(1, i))
                token := tload(at)
                to := tload(add(at, 1))
                tstore(at, 0)
                tstore(add(at, 1), 0)
                mstore(0x00, token)
                mstore(0x20, to)
                let key := keccak256(0x00, 0x40)
                amount := tload(key)
                tstore(key, 0)
            }
            _push(token, to, amount);
        }
    }

    /// @dev A recipient that cannot receive (blocklisted, reverting hook) must not block the
    /// settlement of everyone else: its payout becomes a credit it can withdraw later. A
    /// transfer that failed for want of gas (the token's, or a hook's inside it) says nothing
    /// about the recipient, so it reverts.
    function _push(address token, address to, uint256 amount) private {
        uint256 gasBefore = gasleft();
        if (!IERC20(token).trySafeTransfer(to, amount)) {
            if (gasleft() <= gasBefore / _STARVED_DIVISOR) revert PayoutOutOfGas(token, to);
            _credits[token][to] += amount;
            emit Credited(token, to, amount);
        }
    }
}
