"""Where a process finds its TLS material: certificate, key and the cluster's CA, as files.

Every listener and dialler of the cluster is TLS unless its operator asks for
plaintext: each process reads ``PREFIX_TLS_CERT``, ``PREFIX_TLS_KEY`` and
``PREFIX_TLS_CA`` (the files ``minicloud-ca`` writes) once, in its settings,
and builds its gRPC or HTTP credentials from ``read()``. ``PREFIX_PLAINTEXT=1``
is the one way to run without TLS; the process logs a warning when it does.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

TRUE = ("1", "true", "yes", "on")


@dataclass(frozen=True)
class Material:
    """The bytes of a certificate chain, its key and the CA (each PEM, b"" when not used)."""

    cert: bytes
    key: bytes
    ca: bytes


@dataclass(frozen=True)
class TLSFiles:
    """Paths of a certificate, its key and the CA that vouches for peers ("" when not used)."""

    cert: str = ""
    key: str = ""
    ca: str = ""

    @classmethod
    def from_env(
        cls, env: Mapping[str, str], prefix: str, need_pair: bool = True
    ) -> TLSFiles | None:
        """The files named by PREFIX_TLS_CERT/_KEY/_CA, or None when none is set.

        ValueError when a certificate comes without its key (or the reverse), or
        when need_pair and there is no certificate at all but a CA.
        """
        found = cls(
            env.get(f"{prefix}_TLS_CERT", ""),
            env.get(f"{prefix}_TLS_KEY", ""),
            env.get(f"{prefix}_TLS_CA", ""),
        )
        if not (found.cert or found.key or found.ca):
            return None
        if bool(found.cert) != bool(found.key):
            raise ValueError(f"{prefix}_TLS_CERT and {prefix}_TLS_KEY go together")
        if need_pair and not found.cert:
            raise ValueError(f"{prefix}_TLS_CERT and {prefix}_TLS_KEY are needed for TLS")
        return found

    def read(self) -> Material:
        """The files' bytes; OSError naming the file that cannot be read."""

        def load(path: str, what: str) -> bytes:
            if not path:
                return b""
            try:
                return Path(path).read_bytes()
            except OSError as exc:
                raise OSError(f"cannot read the TLS {what} {path}: {exc.strerror}") from exc

        return Material(load(self.cert, "certificate"), load(self.key, "key"), load(self.ca, "CA"))


def plaintext(env: Mapping[str, str], prefix: str) -> bool:
    """Whether PREFIX_PLAINTEXT asks for no TLS."""
    return env.get(f"{prefix}_PLAINTEXT", "").strip().lower() in TRUE


class NoTLS(ValueError):
    """Neither TLS files nor an explicit plaintext setting were given."""

    def __init__(self, prefix: str, what: str) -> None:
        super().__init__(
            f"{what} needs TLS: set {prefix}_TLS_CERT, {prefix}_TLS_KEY and {prefix}_TLS_CA "
            f"(made by minicloud-ca), or {prefix}_PLAINTEXT=1 to run without TLS"
        )


def required(env: Mapping[str, str], prefix: str, what: str) -> TLSFiles | None:
    """The TLS files, or None when plaintext was asked for; NoTLS when neither was set."""
    files = TLSFiles.from_env(env, prefix)
    if files is not None and plaintext(env, prefix):
        raise ValueError(f"set either {prefix}_TLS_* or {prefix}_PLAINTEXT, not both")
    if files is None and not plaintext(env, prefix):
        raise NoTLS(prefix, what)
    if files is not None and not files.ca:
        raise ValueError(f"{prefix}_TLS_CA (the cluster's CA certificate) is needed for TLS")
    return files
