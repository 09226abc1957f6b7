"""The control plane's token keys: its signing key file, and the public keys it takes.

The signing key (Ed25519, PKCS#8 PEM) is a file of mode 0600, made on first
start when absent; its public half is written beside it as ``<file>.pub``
(mode 0644), for the gateways and the other control planes. Tokens are taken
when signed by this key or by any key in the public key files configured
(other control planes' keys, and old keys while their tokens run out after a
rotation).
"""

from __future__ import annotations

import os
from pathlib import Path

import structlog

from common.accesstoken import Keyring
from common.signing import (
    PublicKey,
    SigningError,
    SigningKey,
    load_public_keys,
    load_signing_key,
    new_signing_key,
)

log = structlog.get_logger(__name__)


def public_path(signing_key: Path) -> Path:
    """Where the public half of a signing key file is written."""
    return signing_key.with_name(signing_key.name + ".pub")


def _create_private(path: Path, data: bytes) -> None:
    """Write a new file readable by its owner only (never, even briefly, by others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as out:
        out.write(data)


def signing_key(path: Path) -> SigningKey:
    """The signing key in path, made there first if absent (OSError if it cannot be used)."""
    if not path.exists():
        key = new_signing_key()
        try:
            _create_private(path, key.pem())
        except FileExistsError:
            pass  # another process made it first: use theirs
        else:
            log.warning("generated a token signing key", key_file=str(path), kid=key.key_id)
    mode = path.stat().st_mode & 0o777
    if mode & 0o077:
        raise OSError(f"token signing key {path} has mode {mode:o}: make it 600")
    try:
        key = load_signing_key(path.read_bytes())
    except SigningError as exc:
        raise OSError(f"cannot use token signing key {path}: {exc}") from None
    pub = public_path(path)
    if not pub.exists() or pub.read_bytes() != key.public.pem():
        # Whole or not at all: a gateway may be reading it as it starts.
        partial = pub.with_name(pub.name + ".tmp")
        partial.write_bytes(key.public.pem())
        partial.chmod(0o644)
        partial.replace(pub)
    return key


def public_keys(paths: tuple[Path, ...]) -> list[PublicKey]:
    """The public keys in each file (OSError naming the file when one cannot be used)."""
    found: list[PublicKey] = []
    for path in paths:
        try:
            found.extend(load_public_keys(path.read_bytes()))
        except SigningError as exc:
            raise OSError(f"cannot use token public key file {path}: {exc}") from None
    return found


def load(signing: Path, public: tuple[Path, ...]) -> tuple[SigningKey, Keyring]:
    """The key this control plane signs with, and every key whose tokens it takes."""
    key = signing_key(signing)
    keyring = Keyring([key.public, *public_keys(public)])
    log.info("token keys", signing_kid=key.key_id, accepted=sorted(keyring.keys))
    return key, keyring
