"""A caller's address passed on by the REST gateway, and the gateway certificate's proof of it.

The gateway logs its callers in through the control plane, which counts
failed logins per caller's address (``controlplane.loginguard``). It passes
the address on in ``x-minicloud-client-address``. With TLS the control plane
believes it only with ``x-minicloud-client-address-proof``: the gateway's
certificate (a ``gateway`` certificate of the cluster's CA, ``common.pki``)
and its signature over the address, the namespace logged into and the time,
``<epoch seconds>.<certificate PEM, base64url>.<signature, base64url>``.
gRPC's Python server cannot ask for a client certificate without requiring
one, so the public listener (which serves clients without certificates)
takes the certificate in the call instead of the TLS handshake.

Pure apart from the clock passed in.
"""

from __future__ import annotations

import base64
import binascii
import datetime
from dataclasses import dataclass

from common import pki

ADDRESS_KEY = "x-minicloud-client-address"
PROOF_KEY = "x-minicloud-client-address-proof"
# How far a proof's time may be from the checker's clock, in seconds.
WINDOW = 60
MAX_PROOF = 4096


@dataclass(frozen=True)
class Gateway:
    """The gateway a proof came from: its certificate's name and serial."""

    name: str
    serial: int


def _payload(address: str, namespace: str, issued: int) -> bytes:
    return f"minicloud-forwarded-address\n{issued}\n{namespace}\n{address}".encode()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def prove(cert_pem: bytes, key_pem: bytes, address: str, namespace: str, now: float) -> str:
    """The proof a gateway sends with a caller's address for a login into namespace."""
    issued = int(now)
    signature = pki.sign(key_pem, _payload(address, namespace, issued))
    return f"{issued}.{_b64(cert_pem)}.{_b64(signature)}"


def check(proof: str, address: str, namespace: str, ca_pem: bytes, now: float) -> Gateway:
    """The gateway that passed address on for a login into namespace (PkiError if none did).

    The certificate must be a current gateway certificate of this CA, the
    signature its key's over exactly this address, namespace and time, and the
    time within ``WINDOW`` seconds of now. Revocation is the caller's to check.
    """
    if not proof:
        raise pki.PkiError("no gateway certificate's proof came with the address")
    if len(proof) > MAX_PROOF:
        raise pki.PkiError("the proof is too long")
    parts = proof.split(".")
    if len(parts) != 3 or not parts[0].isdigit():
        raise pki.PkiError("the proof is malformed")
    issued = int(parts[0])
    if abs(now - issued) > WINDOW:
        raise pki.PkiError("the proof is too old (or from the future)")
    try:
        cert_pem, signature = _unb64(parts[1]), _unb64(parts[2])
    except (binascii.Error, ValueError):
        raise pki.PkiError("the proof is malformed") from None
    when = datetime.datetime.fromtimestamp(now, datetime.UTC)
    name = pki.client_name(cert_pem, ca_pem, when, "gateway")
    pki.verify(cert_pem, _payload(address, namespace, issued), signature)
    return Gateway(name, pki.info(cert_pem).serial)
