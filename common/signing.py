"""Ed25519 keys that sign access tokens: make, load, sign, verify.

One of the two modules that import ``cryptography`` (``common.pki`` holds the
certificates). A signing key is a PKCS#8 PEM private key; its public half a
SubjectPublicKeyInfo PEM. Every public key has a key id, derived from the key
itself (so two processes holding the same key agree on its id without being
told): the first 12 bytes of the SHA-256 of its raw 32 bytes, base64url.

Pure: it takes and gives bytes, and leaves files to the caller.
"""

from __future__ import annotations

import base64
import hashlib
import re

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519

SIGNATURE_BYTES = 64
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)


class SigningError(ValueError):
    """A key that cannot be used (the message says why)."""


def key_id_of(raw_public: bytes) -> str:
    """The key id of a raw 32-byte Ed25519 public key."""
    return base64.urlsafe_b64encode(hashlib.sha256(raw_public).digest()[:12]).decode()


class PublicKey:
    """The public half of a signing key: checks signatures."""

    def __init__(self, key: ed25519.Ed25519PublicKey) -> None:
        self._key = key
        self.raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.key_id = key_id_of(self.raw)

    def verify(self, signature: bytes, data: bytes) -> bool:
        """Whether signature is this key's signature of data."""
        if len(signature) != SIGNATURE_BYTES:
            return False
        try:
            self._key.verify(signature, data)
        except InvalidSignature:
            return False
        return True

    def pem(self) -> bytes:
        """The key as a SubjectPublicKeyInfo PEM."""
        return self._key.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


class SigningKey:
    """A private signing key: signs, and knows its public half."""

    def __init__(self, key: ed25519.Ed25519PrivateKey) -> None:
        self._key = key
        self.public = PublicKey(key.public_key())

    @property
    def key_id(self) -> str:
        """The key id of the public half."""
        return self.public.key_id

    def sign(self, data: bytes) -> bytes:
        """The signature of data (64 bytes)."""
        return self._key.sign(data)

    def pem(self) -> bytes:
        """The private key as an unencrypted PKCS#8 PEM."""
        return self._key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )


def new_signing_key() -> SigningKey:
    """A fresh random signing key."""
    return SigningKey(ed25519.Ed25519PrivateKey.generate())


def load_signing_key(pem: bytes) -> SigningKey:
    """An Ed25519 private key from PEM (SigningError when it is not one)."""
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise SigningError(f"not an unencrypted PEM private key: {exc}") from None
    if not isinstance(key, ed25519.Ed25519PrivateKey):
        raise SigningError("the token signing key is not an Ed25519 key")
    return SigningKey(key)


def load_public_keys(pem: bytes) -> list[PublicKey]:
    """Every Ed25519 public key in a PEM text (one or more blocks; SigningError if none).

    A private key block counts as its public half, so a control plane's own
    signing key file may be listed where public keys are.
    """
    found: list[PublicKey] = []
    for block in _PEM_BLOCK.finditer(pem):
        kind = block.group(1)
        if kind.endswith(b"PRIVATE KEY"):
            found.append(load_signing_key(block.group(0)).public)
            continue
        try:
            key = serialization.load_pem_public_key(block.group(0))
        except (ValueError, TypeError) as exc:
            raise SigningError(f"not a PEM public key: {exc}") from None
        if not isinstance(key, ed25519.Ed25519PublicKey):
            raise SigningError("a token public key is not an Ed25519 key")
        found.append(PublicKey(key))
    if not found:
        raise SigningError("no PEM public key found")
    return found
