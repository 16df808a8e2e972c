"""Where the engine's signing keys come from: an encrypted keystore file, or an environment
variable on testnets.

A key or password must never reach a log, a terminal or an exception message. The libraries
underneath put the offending value in some of their messages, so every error they raise is
replaced here by our own, `from None`, and the original is never shown.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Final

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_keyfile.exceptions import EthKeyfileException
from eth_utils import to_checksum_address

from engine.chain.errors import ChainError

KEY_ENV_VAR: Final = "SETTLE_DEPLOYER_KEY"
PASSWORD_ENV_VAR: Final = "SETTLE_KEYSTORE_PASSWORD"
# A keystore is a few hundred bytes; anything much larger is not one, so do not read it all.
KEYSTORE_SIZE_MAX_BYTES: Final = 64 * 1024
# What eth-keyfile says when the password derives the wrong key (v3 MAC, v4 checksum). It
# signals a wrong password only through the message, so the messages are the contract.
_WRONG_PASSWORD_MESSAGES: Final = frozenset({"MAC mismatch", "Checksum mismatch"})
_KEY_HEX_DIGITS: Final = 64

Prompt = Callable[[str], str]


class SignerKeyMissing(ChainError):
    code = "signer_key_missing"


class SignerKeyMalformed(ChainError):
    code = "signer_key_malformed"


class KeystoreMissing(ChainError):
    code = "keystore_missing"


class KeystoreMalformed(ChainError):
    code = "keystore_malformed"


class KeystorePasswordMissing(ChainError):
    code = "keystore_password_missing"


class KeystorePasswordWrong(ChainError):
    code = "keystore_password_wrong"


def load_signer(
    keystore: Path | None,
    *,
    environ: Mapping[str, str] = os.environ,
    prompt: Prompt | None = None,
    key_env_var: str = KEY_ENV_VAR,
) -> LocalAccount:
    """The signing account: from `keystore` if given, else from `key_env_var` (the deployer's
    SETTLE_DEPLOYER_KEY unless another role's variable is named).

    The keystore's password comes from SETTLE_KEYSTORE_PASSWORD, else from `prompt` (by
    default an echo-free prompt, offered only when stdin is a terminal).
    """
    if keystore is not None:
        return _from_keystore(keystore, environ, prompt or _terminal_prompt())
    key = environ.get(key_env_var)
    if key is None:
        raise SignerKeyMissing(
            f"no signing key: pass --keystore FILE, or set {key_env_var} (testnets only)"
        )
    return _from_hex(key, f"{key_env_var} is not a private key: expected 64 hex digits")


def _from_keystore(path: Path, environ: Mapping[str, str], prompt: Prompt | None) -> LocalAccount:
    keyfile = _read_keystore(path)
    password = environ.get(PASSWORD_ENV_VAR)
    if password is None:
        if prompt is None:
            raise KeystorePasswordMissing(
                f"no password for keystore {path}: set {PASSWORD_ENV_VAR} "
                "or run in a terminal to be asked for it"
            )
        password = prompt(f"Password for keystore {path}: ")
    try:
        key = Account.decrypt(keyfile, password)
    except EthKeyfileException as error:
        if str(error) in _WRONG_PASSWORD_MESSAGES:
            raise KeystorePasswordWrong(
                f"the password does not decrypt keystore {path}; check {PASSWORD_ENV_VAR}"
            ) from None
        raise KeystoreMalformed(f"keystore {path} cannot be decrypted: {error}") from None
    except (KeyError, TypeError, ValueError):
        raise KeystoreMalformed(f"keystore {path} is not a version 3 or 4 keystore") from None
    account = _from_hex(bytes(key).hex(), f"keystore {path} does not hold a private key")
    listed = keyfile.get("address")
    if listed is not None and not _is_address_of(listed, account):
        raise KeystoreMalformed(f"keystore {path} names another address than its key's")
    return account


def _read_keystore(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as file:
            raw = file.read(KEYSTORE_SIZE_MAX_BYTES + 1)
    except FileNotFoundError:
        raise KeystoreMissing(f"keystore file {path} does not exist") from None
    except OSError as error:
        raise KeystoreMissing(f"keystore file {path} cannot be read: {error.strerror}") from None
    if len(raw) > KEYSTORE_SIZE_MAX_BYTES:
        raise KeystoreMalformed(f"keystore {path} is larger than any keystore")
    try:
        keyfile = json.loads(raw)
    except ValueError:
        raise KeystoreMalformed(f"keystore {path} is not JSON") from None
    if not isinstance(keyfile, dict):
        raise KeystoreMalformed(f"keystore {path} is not a JSON object")
    return keyfile


def _from_hex(key: str, message: str) -> LocalAccount:
    digits = key.strip().removeprefix("0x")
    if len(digits) != _KEY_HEX_DIGITS:
        raise SignerKeyMalformed(message)
    try:
        account: LocalAccount = Account.from_key(bytes.fromhex(digits))
    except Exception:  # any of the library's messages could quote the key; ours says enough
        raise SignerKeyMalformed(message) from None
    return account


def _is_address_of(listed: object, account: LocalAccount) -> bool:
    """Keystores list the address in several forms (with or without 0x, any case)."""
    if not isinstance(listed, str):
        return False
    try:
        return to_checksum_address("0x" + listed.removeprefix("0x")) == account.address
    except ValueError:
        return False


def _terminal_prompt() -> Prompt | None:
    return getpass.getpass if sys.stdin.isatty() else None
