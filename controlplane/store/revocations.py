"""Revoked certificates, in the store so that every control plane refuses them.

Key layout:

    revoked/<serial>    {"name": node or server name, "reason": ..., "at": unix time}

A serial is the certificate's serial number in decimal. Revocations are
never removed: a certificate stays revoked until it expires, and one that
is reissued gets a new serial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from controlplane.store.protocol import Put, Store

PREFIX = b"revoked/"


@dataclass(frozen=True)
class Revocation:
    """One revoked certificate."""

    serial: int
    name: str
    reason: str
    at: float


class Revocations:
    """Reads and records revoked certificates."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, revocation: Revocation) -> None:
        """Record a revocation (again: the first record is kept as is)."""
        key = PREFIX + str(revocation.serial).encode()
        if await self.store.get(key) is not None:
            return
        value = {"name": revocation.name, "reason": revocation.reason, "at": revocation.at}
        await self.store.commit([Put(key, json.dumps(value).encode())])

    async def get(self, serial: int) -> Revocation | None:
        """The revocation of a serial, or None when it is not revoked."""
        item = await self.store.get(PREFIX + str(serial).encode())
        return None if item is None else _decode(serial, item.value)

    async def list_all(self) -> list[Revocation]:
        """Every revocation, in key order (serials as text)."""
        return [
            _decode(int(item.key[len(PREFIX) :]), item.value)
            for item in await self.store.scan(PREFIX)
        ]


def _decode(serial: int, raw: bytes) -> Revocation:
    data = json.loads(raw)
    return Revocation(serial, str(data["name"]), str(data["reason"]), float(data["at"]))
