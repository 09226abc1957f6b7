"""Hashed keys and the bearer header: pure functions, no I/O, no clock of their own.

Keys are stored as scrypt hashes with a salt; each key has a nonce, which the
tokens minted with it carry (rotating or deleting the key changes the nonce
and so revokes them). The tokens themselves, signed with Ed25519 and
checkable by any process holding the public keys, are ``common.accesstoken``.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from common import accesstoken
from controlplane.errors import Unauthenticated

# scrypt cost: about 30 ms and 16 MiB per check, once per token.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1


def bearer(metadata_value: str) -> str:
    """The token in an "authorization: Bearer <token>" value (Unauthenticated if absent)."""
    try:
        return accesstoken.bearer(metadata_value)
    except accesstoken.TokenError as exc:
        raise Unauthenticated(str(exc)) from None


def hash_key(key: str, salt: bytes | None = None) -> tuple[str, str]:
    """A (salt, hash) pair, hex encoded, for storing a key."""
    salt = salt if salt is not None else secrets.token_bytes(16)
    digest = hashlib.scrypt(key.encode(), salt=salt, n=SCRYPT_N, r=SCRYPT_R, p=SCRYPT_P)
    return salt.hex(), digest.hex()


def key_matches(key: str, salt_hex: str, hash_hex: str) -> bool:
    """Whether key is the one stored as (salt, hash), in constant time."""
    _, digest = hash_key(key, bytes.fromhex(salt_hex))
    return hmac.compare_digest(digest, hash_hex)


def remember(secret: bytes, key: str) -> bytes:
    """A fast keyed digest of a key, for remembering one that already passed scrypt."""
    return hmac.new(secret, b"verified-key:" + key.encode(), hashlib.sha256).digest()


def new_secret() -> bytes:
    """A fresh random secret (the store's, keying remembered keys)."""
    return secrets.token_bytes(32)


def new_nonce() -> str:
    """A fresh random key nonce."""
    return secrets.token_hex(8)
