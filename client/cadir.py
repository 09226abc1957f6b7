"""A cluster's CA folder: the CA, what it issued, and what it revoked.

Layout (every key file 0600, the folder 0700)::

    ca.crt  ca.key  cluster-id
    issued/NAME.crt  issued/NAME.key
    revoked.json     {serial (decimal string): {"name": ..., "at": ...}}

Issuing a name that exists replaces it only through ``renew`` (a new key and
certificate for the same name, kind and names), so an operator never
overwrites a certificate by accident.
"""

from __future__ import annotations

import datetime
import json
import os
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

from common import pki, signing

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class CaError(Exception):
    """A CA folder operation that cannot be done (the message says why)."""


def _write_private(path: Path, data: bytes) -> None:
    """Write a file that only its owner may read, never briefly readable by others."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
    finally:
        os.close(fd)


def new_token_key(path: Path) -> str:
    """Write a new token signing key (0600) at path and its public half at path.pub.

    Returns the key id. An existing key is never overwritten.
    """
    public = path.with_name(path.name + ".pub")
    for existing in (path, public):
        if existing.exists():
            raise CaError(f"{existing} exists; move it aside first")
    key = signing.new_signing_key()
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, key.pem())
    public.write_bytes(key.public.pem())
    public.chmod(0o644)
    return key.key_id


@dataclass(frozen=True)
class Listed:
    """One issued certificate as the listing shows it."""

    info: pki.CertInfo
    revoked: bool


class CaDir:
    """A CA folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @property
    def issued(self) -> Path:
        return self.path / "issued"

    def _pair(self) -> pki.KeyPair:
        try:
            return pki.KeyPair(
                (self.path / "ca.crt").read_bytes(), (self.path / "ca.key").read_bytes()
            )
        except FileNotFoundError:
            raise CaError(f"no CA in {self.path}: run 'minicloud-ca init' first") from None

    def cluster_id(self) -> str:
        """The cluster's id, made when the CA was."""
        try:
            return (self.path / "cluster-id").read_text().strip()
        except FileNotFoundError:
            raise CaError(f"no CA in {self.path}: run 'minicloud-ca init' first") from None

    def init(self, now: datetime.datetime, cluster_id: str = "") -> str:
        """Create the CA (refused when one exists); returns the cluster id."""
        if (self.path / "ca.key").exists():
            raise CaError(f"a CA already exists in {self.path}")
        cluster_id = cluster_id or str(uuid.uuid4())
        self.path.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.path, 0o700)
        self.issued.mkdir(exist_ok=True, mode=0o700)
        pair = pki.create_ca(cluster_id, now)
        _write_private(self.path / "ca.key", pair.key)
        (self.path / "ca.crt").write_bytes(pair.cert)
        (self.path / "cluster-id").write_text(cluster_id + "\n")
        return cluster_id

    def _check_name(self, name: str) -> None:
        if not NAME_RE.match(name):
            raise CaError(f"certificate name {name!r} must be 1-64 of A-Za-z0-9._- ")

    def issue(
        self,
        kind: pki.Kind,
        name: str,
        now: datetime.datetime,
        sans: tuple[str, ...] = (),
        days: int = pki.DEFAULT_DAYS,
        replace: bool = False,
    ) -> Path:
        """Issue a certificate; returns its path (the key lies beside it, .key)."""
        self._check_name(name)
        cert_path = self.issued / f"{name}.crt"
        if cert_path.exists() and not replace:
            raise CaError(f"{name} was already issued: renew it, or revoke it and pick a new name")
        try:
            pair = pki.issue(self._pair(), kind, name, now, sans=sans, days=days)
        except pki.PkiError as exc:
            raise CaError(str(exc)) from None
        _write_private(self.issued / f"{name}.key", pair.key)
        cert_path.write_bytes(pair.cert)
        return cert_path

    def renew(self, name: str, now: datetime.datetime, days: int = pki.DEFAULT_DAYS) -> Path:
        """A new key and certificate for an issued name, of the same kind and names."""
        self._check_name(name)
        try:
            old = pki.info((self.issued / f"{name}.crt").read_bytes())
        except FileNotFoundError:
            raise CaError(f"{name} was never issued") from None
        kinds: dict[str, pki.Kind] = {kind: kind for kind in pki.KINDS}
        if old.kind not in kinds:
            raise CaError(f"{name} is not a server, node or gateway certificate")
        kind = kinds[old.kind]
        sans = old.sans if kind == "server" else tuple(s for s in old.sans if s != name)
        self.revoke(name, now, reason="renewed")
        return self.issue(kind, name, now, sans=sans, days=days, replace=True)

    def _revoked(self) -> dict[str, dict[str, object]]:
        try:
            data = json.loads((self.path / "revoked.json").read_text())
        except FileNotFoundError:
            return {}
        return data if isinstance(data, dict) else {}

    def revoked_serials(self) -> frozenset[int]:
        """Serial numbers of every revoked certificate."""
        return frozenset(int(s) for s in self._revoked())

    def revoke(self, name: str, now: datetime.datetime, reason: str = "revoked") -> int:
        """Revoke an issued name's current certificate; returns its serial."""
        self._check_name(name)
        try:
            found = pki.info((self.issued / f"{name}.crt").read_bytes())
        except FileNotFoundError:
            raise CaError(f"{name} was never issued") from None
        revoked = self._revoked()
        revoked[str(found.serial)] = {"name": name, "at": now.isoformat(), "reason": reason}
        tmp = self.path / "revoked.json.tmp"
        tmp.write_text(json.dumps(revoked, indent=1, sort_keys=True))
        tmp.replace(self.path / "revoked.json")
        return found.serial

    def listing(self) -> list[Listed]:
        """Every current issued certificate, by name."""
        revoked = self.revoked_serials()
        out = []
        for path in sorted(self.issued.glob("*.crt")):
            found = pki.info(path.read_bytes())
            out.append(Listed(found, found.serial in revoked))
        return out
