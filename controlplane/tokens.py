"""Signed access tokens and hashed keys: pure functions, no I/O, no clock of their own.

A token is ``base64url(claims JSON) + "." + base64url(HMAC-SHA256(secret, claims))``.
Its claims name the namespace, the key it was minted with, that key's nonce
(rotating or deleting the key changes the nonce and so revokes the token) and
its expiry in epoch seconds. Keys are stored as scrypt hashes with a salt.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import secrets
from dataclasses import dataclass

from controlplane.errors import Unauthenticated

# scrypt cost: about 30 ms and 16 MiB per check, once per token.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
MAX_TOKEN_BYTES = 4096


@dataclass(frozen=True)
class Claims:
    """Who a token speaks for, and until when."""

    namespace: str
    key_name: str
    nonce: str
    expires_at: float


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _sign(secret: bytes, body: str) -> str:
    return _b64(hmac.new(secret, body.encode(), hashlib.sha256).digest())


def mint(secret: bytes, claims: Claims) -> str:
    """A signed token carrying claims."""
    body = _b64(
        json.dumps(
            {
                "ns": claims.namespace,
                "key": claims.key_name,
                "nonce": claims.nonce,
                "exp": claims.expires_at,
            },
            separators=(",", ":"),
        ).encode()
    )
    return f"{body}.{_sign(secret, body)}"


def verify(secret: bytes, token: str, now: float) -> Claims:
    """The claims of a genuine, unexpired token (Unauthenticated otherwise)."""
    if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 1:
        raise Unauthenticated("malformed token")
    body, signature = token.split(".")
    if not hmac.compare_digest(_sign(secret, body), signature):
        raise Unauthenticated("invalid token signature")
    try:
        data = json.loads(_unb64(body))
        claims = Claims(str(data["ns"]), str(data["key"]), str(data["nonce"]), float(data["exp"]))
    except (ValueError, KeyError, TypeError, binascii.Error) as exc:
        raise Unauthenticated("malformed token") from exc
    if claims.expires_at <= now:
        raise Unauthenticated("token expired")
    return claims


def bearer(metadata_value: str) -> str:
    """The token in an "authorization: Bearer <token>" value (Unauthenticated if absent)."""
    scheme, _, token = metadata_value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthenticated("expected 'authorization: Bearer <token>'")
    return token.strip()


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
    """A fresh random signing secret."""
    return secrets.token_bytes(32)


def new_nonce() -> str:
    """A fresh random key nonce."""
    return secrets.token_hex(8)
