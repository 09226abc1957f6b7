"""Is this request's bearer token valid? Checked before anything else, and cached.

The gateway cannot verify a token itself (the control plane holds the signing
secret and the keys' nonces), so it asks the control plane with one cheap
authenticated call and remembers the answer: a valid token for
``ttl`` seconds (a revoked one is then still refused by the call that
follows, only later in the order of checks), an invalid one for good (a token
never becomes valid again). Both memories are bounded. A header that cannot be
a bearer token (not ``Bearer <b64token>`` in printable ASCII, or too long) is
refused without asking anyone.
"""

from __future__ import annotations

import re
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import TypeVar

from aiohttp import web

from gateway.backend import Backend
from gateway.errors import HttpError

# RFC 6750's b64token; the control plane's tokens are far shorter than the bound.
BEARER = re.compile(r"Bearer ([A-Za-z0-9\-._~+/]+=*)", re.IGNORECASE)
MAX_HEADER = 4096
MAX_REMEMBERED = 4096
# gRPC status of the check -> what the caller is told.
REFUSED = ("UNAUTHENTICATED", "PERMISSION_DENIED", "INVALID_ARGUMENT", "NOT_FOUND")
UNCHECKABLE = HttpError(503, "the control plane cannot check tokens right now; retry")


class TokenChecker:
    """Answers "valid or not" for Authorization header values, remembering answers."""

    def __init__(
        self, ttl: float, timeout: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.ttl = ttl
        self.timeout = timeout
        self.clock = clock
        self._valid: OrderedDict[str, float] = OrderedDict()
        self._invalid: OrderedDict[str, None] = OrderedDict()

    async def check(self, backend: Backend, header: str | None) -> None:
        """Return if header carries a valid token; raise the HttpError to answer otherwise."""
        if not header:
            raise HttpError(401, "this call needs 'Authorization: Bearer <token>' (POST /auth)")
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
