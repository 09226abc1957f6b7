"""Namespace records (with their hashed keys) and the store's secret.

Key layout:

    ns/<name>              namespace record (JSON)
    config/token-secret    the secret that keys remembered logins (raw bytes; tokens
                           are signed with Ed25519 keys held in files, not with it)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from controlplane.store.protocol import Conflict, Put, Store
from controlplane.tokens import new_secret

SCHEMA = 1
SECRET_KEY = b"config/token-secret"


@dataclass(frozen=True)
class Key:
    """One named key of a namespace: its scrypt salt and hash, and the nonce of its tokens."""

    salt: str
    hash: str
    nonce: str
    created_at: float = 0.0


@dataclass(frozen=True)
class Namespace:
    """A namespace: an owner of objects, with the keys that authenticate as it."""

    name: str
    state: str = "created"
    keys: dict[str, Key] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    created_at: float = 0.0
    version: int = 0
    # The namespaces this one trusts: they see its artifacts and may use them as bases.
    trusted: tuple[str, ...] = ()

    def with_changes(self, **changes: Any) -> Namespace:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


def encode(ns: Namespace) -> bytes:
    """A namespace as stored JSON (its store version is not stored)."""
    data = dataclasses.asdict(ns)
    data.pop("version")
    data["schema"] = SCHEMA
    return json.dumps(data, separators=(",", ":")).encode()


def decode(raw: bytes, version: int) -> Namespace:
    """A namespace from stored JSON, carrying its store version."""
    data = json.loads(raw)
    data.pop("schema", None)
    data["keys"] = {name: Key(**key) for name, key in data.get("keys", {}).items()}
    data["trusted"] = tuple(data.get("trusted", ()))
    return Namespace(**data, version=version)


class Namespaces:
    """Reads and writes namespaces; writes are compare-and-set on the record's version."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, name: str) -> Namespace | None:
        """A namespace by name, or None."""
        item = await self.store.get(f"ns/{name}".encode())
        return None if item is None else decode(item.value, item.version)

    async def list_all(self) -> list[Namespace]:
        """Every namespace, by name."""
        return [decode(item.value, item.version) for item in await self.store.scan(b"ns/")]

    async def put(self, ns: Namespace) -> Namespace:
        """Write ns if nobody wrote it since it was read (version 0: must be new).

        Raises ``Conflict`` otherwise; returns the record with its new version.
        """
        await self.store.commit([Put(f"ns/{ns.name}".encode(), encode(ns), expect=ns.version)])
        return ns.with_changes(version=ns.version + 1)

    async def secret(self) -> bytes:
        """The store's secret, made on first use and kept from then on."""
        item = await self.store.get(SECRET_KEY)
        if item is not None:
            return item.value
        with contextlib.suppress(Conflict):
            await self.store.commit([Put(SECRET_KEY, new_secret(), expect=0)])
        item = await self.store.get(SECRET_KEY)
        assert item is not None
        return item.value
