"""The cluster's certificates: a CA, server certificates and node certificates.

With ``common.signing`` (the token keys), the only module that imports
``cryptography``. Keys are ECDSA P-256 (what
every TLS stack here speaks, gRPC's BoringSSL included). A cluster's CA
carries the cluster's id in its subject (``OU=cluster <id>``), so two
clusters' certificates never pass for each other. Certificates are of two
kinds, told apart by their extended key usage and a fixed organisational
unit:

- ``server``: serverAuth, with the DNS names and IP addresses asked for as
  subject alternative names (the control plane, the gateway);
- ``node``: clientAuth, common name = the node's name, which is the only
  name a node agent holding it may speak as;
- ``gateway``: clientAuth, common name = the gateway's name: the only
  certificate whose holder may pass a caller's address on to the control
  plane (it signs each one, ``sign``/``verify``; see ``common.forwarded``).

Everything here is pure apart from the clock passed in: it takes and gives
PEM bytes, and leaves files to the caller.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from typing import Literal

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

Kind = Literal["server", "node", "gateway"]
KINDS: tuple[Kind, ...] = ("server", "node", "gateway")
CA_DAYS = 3650
DEFAULT_DAYS = 365
ORGANISATION = "minicloud"
_UNITS: dict[Kind, str] = {"server": "server", "node": "node", "gateway": "gateway"}


class PkiError(ValueError):
    """A certificate request or a certificate that cannot be used (the message says why)."""


@dataclass(frozen=True)
class KeyPair:
    """A certificate and its private key, both PEM."""

    cert: bytes
    key: bytes


@dataclass(frozen=True)
class CertInfo:
    """What a certificate says, as the CA's listing shows it."""

    name: str
    kind: str
    serial: int
    not_before: datetime.datetime
    not_after: datetime.datetime
    sans: tuple[str, ...]
    cluster_id: str


def _new_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _load_key(pem: bytes) -> ec.EllipticCurvePrivateKey:
    key = serialization.load_pem_private_key(pem, password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise PkiError("the CA key is not an ECDSA key")
    return key


def load_cert(pem: bytes) -> x509.Certificate:
    """A PEM certificate (PkiError when it is not one)."""
    try:
        return x509.load_pem_x509_certificate(pem)
    except ValueError as exc:
        raise PkiError(f"not a PEM certificate: {exc}") from None


def _attr(name: x509.Name, oid: x509.ObjectIdentifier) -> str:
    found = name.get_attributes_for_oid(oid)
    return str(found[0].value) if found else ""


def cluster_of(cert: x509.Certificate) -> str:
    """The cluster id an issued certificate (or the CA itself) names."""
    unit = _attr(cert.issuer, NameOID.ORGANIZATIONAL_UNIT_NAME)
    return unit.removeprefix("cluster ") if unit.startswith("cluster ") else ""


def create_ca(cluster_id: str, now: datetime.datetime) -> KeyPair:
    """A new self-signed CA for a cluster, valid ten years."""
    if not cluster_id:
        raise PkiError("a CA needs the cluster's id")
    key = _new_key()
    name = x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
            x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, f"cluster {cluster_id}"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"minicloud CA {cluster_id[:8]}"),
        ]
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def _san(entry: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(entry))
    except ValueError:
        pass
    if not entry or len(entry) > 253 or any(c.isspace() for c in entry) or "/" in entry:
        raise PkiError(f"{entry!r} is neither an IP address nor a DNS name")
    return x509.DNSName(entry)


def issue(
    ca: KeyPair,
    kind: Kind,
    name: str,
    now: datetime.datetime,
    *,
    sans: tuple[str, ...] = (),
    days: int = DEFAULT_DAYS,
) -> KeyPair:
    """A certificate of a kind for a name, signed by the CA, valid ``days`` from now.

    A server certificate names ``sans`` (DNS names or IP addresses; at least
    one); a node (or gateway) certificate names the node (gateway) in its
    common name (and as a DNS name, so a node may also serve under it).
    """
    if kind not in KINDS:
        raise PkiError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    if not name or len(name) > 64:
        raise PkiError("a certificate needs a name of 1 to 64 characters")
    if not 1 <= days <= CA_DAYS:
        raise PkiError(f"days must be between 1 and {CA_DAYS}, not {days}")
    if kind == "server" and not sans:
        raise PkiError("a server certificate needs at least one DNS name or IP address")
    ca_cert = load_cert(ca.cert)
    ca_key = _load_key(ca.key)
    if now + datetime.timedelta(days=days) > ca_cert.not_valid_after_utc:
        raise PkiError("the certificate would outlive the CA")
    key = _new_key()
    names = sans if kind == "server" else (name, *sans)
    usage = ExtendedKeyUsageOID.SERVER_AUTH if kind == "server" else ExtendedKeyUsageOID.CLIENT_AUTH
    cert = (
        x509.CertificateBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANISATION),
                    x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, _UNITS[kind]),
                    x509.NameAttribute(NameOID.COMMON_NAME, name),
                ]
            )
        )
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([_san(n) for n in dict.fromkeys(names)]), critical=False
        )
        .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return KeyPair(cert.public_bytes(serialization.Encoding.PEM), _key_pem(key))


def info(pem: bytes) -> CertInfo:
    """What an issued certificate says."""
    cert = load_cert(pem)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = tuple(
            str(v)
            for v in (
                *san.get_values_for_type(x509.DNSName),
                *san.get_values_for_type(x509.IPAddress),
            )
        )
    except x509.ExtensionNotFound:
        sans = ()
    return CertInfo(
        name=_attr(cert.subject, NameOID.COMMON_NAME),
        kind=_attr(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME),
        serial=cert.serial_number,
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
        sans=sans,
        cluster_id=cluster_of(cert),
    )


def node_name(pem: bytes, ca_pem: bytes, now: datetime.datetime) -> str:
    """The node a client certificate speaks for, checked against the CA (PkiError if not).

    TLS has already checked the chain when this runs on a peer's certificate;
    this checks it again (so it is safe on its own), then that the certificate
    is a current node certificate of this cluster.
    """
    return client_name(pem, ca_pem, now, "node")


def client_name(pem: bytes, ca_pem: bytes, now: datetime.datetime, kind: Kind) -> str:
    """The name in a current client certificate of this kind issued by the CA (else PkiError)."""
    cert = load_cert(pem)
    ca_cert = load_cert(ca_pem)
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature):
        raise PkiError("the certificate is not issued by this cluster's CA") from None
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise PkiError("the certificate has expired or is not yet valid")
    found = info(pem)
    if found.kind != kind:
        raise PkiError(f"a {found.kind or 'foreign'} certificate is not a {kind} certificate")
    return found.name


def sign(key_pem: bytes, data: bytes) -> bytes:
    """An ECDSA (SHA-256) signature of data with an issued certificate's key."""
    try:
        key = _load_key(key_pem)
    except (ValueError, TypeError) as exc:
        raise PkiError(f"not an ECDSA private key: {exc}") from None
    return key.sign(data, ec.ECDSA(hashes.SHA256()))


def verify(cert_pem: bytes, data: bytes, signature: bytes) -> None:
    """Check that the key of this certificate signed data (PkiError if not)."""
    public = load_cert(cert_pem).public_key()
    if not isinstance(public, ec.EllipticCurvePublicKey):
        raise PkiError("the certificate's key is not an ECDSA key")
    try:
        public.verify(signature, data, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise PkiError("the signature does not match the certificate") from None
