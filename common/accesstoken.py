"""Access tokens: a JWT-style compact token signed with Ed25519. Pure, no clock of its own.

A token is ``header.payload.signature``, each part base64url without padding:

- header ``{"alg":"EdDSA","kid":KEY_ID,"typ":"JWT"}``: the algorithm is pinned
  (anything but ``EdDSA`` is refused, ``none`` included, so no algorithm
  confusion is possible) and ``kid`` names the public key that checks it;
- payload: ``sub`` (the namespace), ``key`` and ``knc`` (the name and nonce of
  the namespace key it was minted with, for revocation), ``iat``, ``nbf`` and
  ``exp`` (epoch seconds), ``jti`` (a random token id);
- signature: Ed25519 over the ASCII ``header.payload``.

Anyone holding the public keys (``Keyring``) checks a token without asking
anyone: the signature first, then the claims, then the clock, with ``SKEW``
seconds allowed either way for clocks that differ between machines.
"""

from __future__ import annotations

import base64
import json
import re
import secrets
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from common.signing import PublicKey, SigningKey

ALGORITHM = "EdDSA"
TYPE = "JWT"
MAX_TOKEN_BYTES = 4096
# Seconds a token is still taken after its expiry, or already before its issue time.
SKEW = 30.0
_PART = re.compile(r"^[A-Za-z0-9_-]+$")


class TokenError(ValueError):
    """A token that is not to be taken (the message says why, without echoing it)."""


@dataclass(frozen=True)
class Claims:
    """Who a token speaks for, with which key, and when."""

    namespace: str
    key_name: str
    key_nonce: str
    issued_at: int
    expires_at: int
    token_id: str = ""


class Keyring:
    """The public keys whose tokens are taken, by key id."""

    def __init__(self, keys: Iterable[PublicKey]) -> None:
        self.keys = {key.key_id: key for key in keys}

    def __contains__(self, key_id: object) -> bool:
        return key_id in self.keys

    def __len__(self) -> int:
        return len(self.keys)


def new_token_id() -> str:
    """A fresh random token id."""
    return secrets.token_urlsafe(12)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(part: str) -> bytes:
    # The alphabet is checked first: the decoder would skip stray characters.
    if not _PART.match(part) or len(part) % 4 == 1:
        raise TokenError("malformed token")
    raw = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
    if _b64(raw) != part:  # one spelling per value: unused trailing bits must be zero
        raise TokenError("malformed token")
    return raw


def _json(data: dict[str, Any]) -> str:
    return _b64(json.dumps(data, separators=(",", ":"), sort_keys=True).encode())


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found = dict(pairs)
    if len(found) != len(pairs):
        raise TokenError("malformed token")
    return found


def _refuse_constant(name: str) -> Any:
    raise TokenError("malformed token")


def _object(part: str) -> dict[str, Any]:
    try:
        data = json.loads(
            _unb64(part), object_pairs_hook=_no_duplicates, parse_constant=_refuse_constant
        )
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise TokenError("malformed token") from None
    if not isinstance(data, dict):
        raise TokenError("malformed token")
    return data


def _text(data: dict[str, Any], name: str, required: bool = True) -> str:
    value = data.get(name, None if required else "")
    if not isinstance(value, str) or (required and not value):
        raise TokenError("malformed token claims")
    return value


def _seconds(data: dict[str, Any], name: str) -> int:
    value = data.get(name)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TokenError("malformed token claims")
    return value


def mint(key: SigningKey, claims: Claims) -> str:
    """A token carrying claims, signed with key."""
    header = _json({"alg": ALGORITHM, "kid": key.key_id, "typ": TYPE})
    payload = _json(
        {
            "sub": claims.namespace,
            "key": claims.key_name,
            "knc": claims.key_nonce,
            "iat": claims.issued_at,
            "nbf": claims.issued_at,
            "exp": claims.expires_at,
            "jti": claims.token_id,
        }
    )
    signed = f"{header}.{payload}"
    return f"{signed}.{_b64(key.sign(signed.encode()))}"


def verify(keyring: Keyring, token: str, now: float, skew: float = SKEW) -> Claims:
    """The claims of a genuine token valid at now (TokenError otherwise).

    In order: the shape, the header (algorithm pinned, a known key id), the
    signature, and only then the claims and the clock.
    """
    if not token or len(token) > MAX_TOKEN_BYTES or token.count(".") != 2:
        raise TokenError("malformed token")
    header_part, payload_part, signature_part = token.split(".")
    header = _object(header_part)
    if header.get("alg") != ALGORITHM:
        raise TokenError("token algorithm not accepted")
    if header.get("typ", TYPE) != TYPE or "crit" in header:
        raise TokenError("malformed token header")
    kid = header.get("kid")
    if not isinstance(kid, str) or kid not in keyring:
        raise TokenError("token signed by an unknown key")
    signature = _unb64(signature_part)
    if not keyring.keys[kid].verify(signature, f"{header_part}.{payload_part}".encode()):
        raise TokenError("invalid token signature")
    data = _object(payload_part)
    claims = Claims(
        namespace=_text(data, "sub"),
        key_name=_text(data, "key"),
        key_nonce=_text(data, "knc"),
        issued_at=_seconds(data, "iat"),
        expires_at=_seconds(data, "exp"),
        token_id=_text(data, "jti", required=False),
    )
    not_before = _seconds(data, "nbf") if "nbf" in data else claims.issued_at
    if now + skew < max(not_before, claims.issued_at):
        raise TokenError("token not yet valid")
    if claims.expires_at + skew <= now:
        raise TokenError("token expired")
    return claims


def bearer(value: str) -> str:
    """The token in an ``authorization: Bearer <token>`` value (TokenError if absent)."""
    scheme, _, token = value.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise TokenError("expected 'authorization: Bearer <token>'")
    return token.strip()
