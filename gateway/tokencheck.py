"""Is this request's bearer token valid? Checked before anything else is done with it.

With the control planes' token public keys (``MINICLOUD_GATEWAY_TOKEN_PUBLIC_KEYS``)
the gateway checks a token itself, by its signature and clock
(``TokenCheck``): a missing, malformed, forged, expired or not yet valid
token, or one of a key it does not hold, is answered 401 without asking
anyone. Without keys (``TokenChecker`` then asks), it asks the control plane
with one cheap authenticated call and remembers the answer: a valid token for
``ttl`` seconds, an invalid one for good; both memories are bounded.
Revocation (a deleted key or namespace) is the control plane's to check, on
the call the gateway forwards. ``admission`` calls ``TokenChecker.check``
before anything else.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import structlog
from aiohttp import web

from common.accesstoken import SKEW, Keyring, TokenError, bearer, verify
from common.signing import SigningError, load_public_keys
from gateway.backend import Backend
from gateway.errors import HttpError

log = structlog.get_logger(__name__)


def load_keyring(paths: tuple[Path, ...]) -> Keyring | None:
    """The public keys in the files (None when no file is given; OSError naming a bad one)."""
    if not paths:
        log.warning(
            "no token public keys (MINICLOUD_GATEWAY_TOKEN_PUBLIC_KEYS): "
            "tokens are checked by the control plane only"
        )
        return None
    keys = []
    for path in paths:
        try:
            keys.extend(load_public_keys(path.read_bytes()))
        except SigningError as exc:
            raise OSError(f"cannot use token public key file {path}: {exc}") from None
    keyring = Keyring(keys)
    log.info("token public keys", kids=sorted(keyring.keys))
    return keyring


class TokenCheck:
    """Refuses (401) a request whose Authorization header holds no token the keys accept."""

    def __init__(
        self,
        keyring: Keyring | None,
        skew: float = SKEW,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.keyring = keyring
        self.skew = skew
        self.clock = clock

    def __call__(self, authorization: str | None) -> None:
        """Return when the header holds an acceptable token; raise HttpError(401) otherwise."""
        try:
            token = bearer(authorization or "")
            if self.keyring is not None:
                verify(self.keyring, token, self.clock(), self.skew)
        except TokenError as exc:
            raise HttpError(401, f"unauthorized: {exc}") from None


# RFC 6750's b64token; the control plane's tokens are far shorter than the bound.
BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
MAX_HEADER = 4096
MAX_REMEMBERED = 4096
# gRPC status of the check -> what the caller is told.
REFUSED = ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "NOT_FOUND")
UNCHECKABLE = HttpError(503, "the control plane cannot check tokens right now; retry")


class TokenChecker:
    """Answers "valid or not" for Authorization header values: by signature when it holds
    the keys (``local``), else by asking the control plane and remembering answers."""

    def __init__(
        self,
        ttl: float,
        timeout: float,
        clock: Callable[[], float] = time.monotonic,
        local: TokenCheck | None = None,
    ) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self.local = local
        self._valid: OrderedDict[str, float] = OrderedDict()
        self._invalid: OrderedDict[str, None] = OrderedDict()

    async def check(self, backend: Backend, header: str | None) -> None:
        """Return if header carries a valid token; raise the HttpError to answer otherwise."""
        if not header:
            raise HttpError(401, "this call needs 'Authorization: Bearer <token>' (POST /auth)")
        if self.local is not None and self.local.keyring is not None:
            self.local(header)  # signature and clock: no call to anyone
            return
        match = BEARER.fullmatch(header.strip()) if len(header) <= MAX_HEADER else None
        if match is None:
            raise HttpError(401, "invalid Authorization header: expected 'Bearer <token>'")
        value = f"Bearer {match.group(1)}"
        now = self.clock()
        if self._valid.get(value, 0.0) > now:
            return
        if value in self._invalid:
            raise HttpError(401, "invalid or expired token")
        status = await backend.token_status(value, self.timeout)
        if status == "OK":
            _remember(self._valid, value, now + self.ttl)
            return
        if status in REFUSED:
            self._valid.pop(value, None)
            _remember(self._invalid, value, None)
            raise HttpError(401, "invalid or expired token")
        if status == "UNIMPLEMENTED":
            raise HttpError(501, "not implemented by this control plane")
        raise UNCHECKABLE


V = TypeVar("V")


def _remember(memory: OrderedDict[str, V], key: str, value: V) -> None:
    memory[key] = value
    memory.move_to_end(key)
    while len(memory) > MAX_REMEMBERED:
        memory.popitem(last=False)


TOKENS: web.AppKey[TokenChecker] = web.AppKey("tokens", TokenChecker)
