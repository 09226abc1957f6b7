"""The gateway's own check of a caller's token, before anything else is done with a request.

The gateway holds the control planes' token public keys
(``MINICLOUD_GATEWAY_TOKEN_PUBLIC_KEYS``): a request to any route but the
public ones with no token, a malformed, forged, expired or not yet valid one,
or one signed by a key it does not hold, is answered 401 before its body is
read or anything is forwarded. Revocation (a deleted key or namespace) is the
control plane's to check, on the call the gateway forwards.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import structlog

from common.accesstoken import SKEW, Keyring, TokenError, bearer, verify
from common.signing import SigningError, load_public_keys
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
