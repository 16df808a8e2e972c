"""Proof that the code at the escrow's address is SettlementEscrow of the checked-in artifacts,
with this chain's and this address's immutables in the placeholders the compiler left.

Comparing hashes alone cannot work (the immutables differ per chain and address), and an
eth_call simulation of the initcode would run at another address, so with other immutables.
The CREATE2 address already commits to the initcode; this check proves that the runtime is
the one the artifacts describe and that its EIP-712 domain (what payers sign against) is this
chain's and this address's.
"""

from __future__ import annotations

from typing import Final

from eth_utils import keccak, to_checksum_address
from web3 import Web3

from engine.chain.contracts.compiler import load_artifact
from engine.chain.contracts.escrow import ESCROW_NAME
from engine.deploy.errors import CodeMismatch
from engine.domain.ids import DOMAIN_NAME, DOMAIN_VERSION, domain_separator

PUSH1: Final = 0x60
PUSH32: Final = 0x7F
WORD_BYTES: Final = 32


def verify_deployed(w3: Web3, escrow: str, chain_id: int) -> bytes:
    """Checks the escrow's code (check_escrow_code); returns the keccak of that code."""
    code = bytes(w3.eth.get_code(to_checksum_address(escrow)))
    runtime = bytes.fromhex(load_artifact(ESCROW_NAME).deployed_bytecode[2:])
    check_escrow_code(code, runtime, chain_id, to_checksum_address(escrow))
    return keccak(code)


def check_escrow_code(code: bytes, artifact_runtime: bytes, chain_id: int, escrow: str) -> None:
    """Raises CodeMismatch unless `code` is the artifact's runtime with this deployment's
    immutables filled in: equal in every byte outside the placeholders, and each placeholder
    holding a value the constructor computes for this chain and address."""
    if len(code) != len(artifact_runtime):
        raise CodeMismatch(
            f"the code at {escrow} is {len(code)} bytes, {ESCROW_NAME}'s artifact "
            f"{len(artifact_runtime)}: it is another contract"
        )
    allowed = expected_immutables(chain_id, escrow)
    masked = bytearray(code)
    for slot in immutable_slots(artifact_runtime):
        if bytes(code[slot : slot + WORD_BYTES]) not in allowed:
            raise CodeMismatch(
                f"the code at {escrow} holds an unexpected immutable at byte {slot}: its "
                "EIP-712 domain is not this chain's and this address's"
            )
        masked[slot : slot + WORD_BYTES] = bytes(WORD_BYTES)
    if masked != artifact_runtime:
        first = next(
            i for i, (a, b) in enumerate(zip(masked, artifact_runtime, strict=True)) if a != b
        )
        raise CodeMismatch(
            f"the code at {escrow} is not {ESCROW_NAME} of these artifacts (it differs at "
            f"byte {first}); was it deployed from other sources?"
        )


def expected_immutables(chain_id: int, escrow: str) -> frozenset[bytes]:
    """Every value the escrow's constructor writes into its code (OpenZeppelin EIP712's).

    These are the only bytes in which deployed code may differ from the artifact's
    deployedBytecode, where the compiler leaves zero placeholders for them.
    """
    return frozenset(
        {
            _short_string(DOMAIN_NAME),
            _short_string(DOMAIN_VERSION),
            keccak(text=DOMAIN_NAME),
            keccak(text=DOMAIN_VERSION),
            chain_id.to_bytes(WORD_BYTES, "big"),
            bytes.fromhex(escrow[2:]).rjust(WORD_BYTES, b"\0"),
            domain_separator(chain_id, escrow),
        }
    )


def immutable_slots(runtime: bytes) -> list[int]:
    """Offsets of the zero words the compiler leaves for immutables: PUSH32 0x00…00.

    Walks the instructions so that push data is never read as an opcode. The compiler pushes
    a real zero with PUSH0, so a PUSH32 of zero is a placeholder.
    """
    slots = []
    offset = 0
    while offset < len(runtime):
        opcode = runtime[offset]
        if opcode == PUSH32 and runtime[offset + 1 : offset + 1 + WORD_BYTES] == bytes(WORD_BYTES):
            slots.append(offset + 1)
        offset += 1 + (opcode - PUSH1 + 1 if PUSH1 <= opcode <= PUSH32 else 0)
    return slots


def _short_string(text: str) -> bytes:
    """OpenZeppelin's ShortString: the bytes left-aligned, their length in the last byte."""
    raw = text.encode()
    assert len(raw) < WORD_BYTES, text
    return raw.ljust(WORD_BYTES - 1, b"\0") + bytes([len(raw)])
