"""This control plane as one replica among others: its name and its store lease.

One lease per running replica, granted at start (``start``) and kept alive
every ttl/3 (``run``); what the replica holds only while it lives (which
nodes' streams it has, ``controlplane/presence.py``) is written tied to it,
so it vanishes when the replica dies. When the lease ends anyway (a
keep-alive that came too late) ``run`` grants a new one and calls
``on_renewed``, whose owner writes its keys again. ``close`` revokes it:
what it held goes at once rather than a ttl later.

A small stand-in for the replicas work's fuller module of the same name.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

import structlog

from controlplane.store.protocol import Coordinated, LeaseExpired, StoreError

log = structlog.get_logger(__name__)

# Seconds a replica's keys outlive it when it dies without revoking its lease.
LEASE_TTL = 10.0


class Replica:
    """A replica's name (MINICLOUD_NAME) and its live lease in the store."""

    def __init__(self, store: Coordinated, name: str, ttl: float = LEASE_TTL) -> None:
        self.store = store
        self.name = name
        self.ttl = ttl
        self.lease = 0
        self.on_renewed: Callable[[], Awaitable[None]] | None = None
        self._closed = False

    async def start(self) -> None:
        """Grant the replica's lease (before anything is written tied to it).

        A store that cannot grant leases yet (an adapter without them) leaves the
        lease 0: nothing is then recorded for the other replicas.
        """
        try:
            self.lease = await self.store.grant(self.ttl)
        except (AttributeError, NotImplementedError):
            log.warning("this store has no leases: other replicas see none of this one's nodes")
            return
        log.info("replica lease granted", replica=self.name, ttl=self.ttl)

    async def run(self) -> None:
        """Keep the lease alive until cancelled, granting a new one if it ended."""
        while not self._closed and self.lease:
            await asyncio.sleep(self.ttl / 3)
            try:
                await self.store.keep_alive(self.lease)
                continue
            except LeaseExpired:
                log.warning("the replica's lease ended; granting a new one", replica=self.name)
            except StoreError as exc:
                log.warning("cannot renew the replica's lease", replica=self.name, error=str(exc))
                continue
            try:
                self.lease = await self.store.grant(self.ttl)
            except StoreError as exc:
                log.warning("cannot grant the replica's lease", replica=self.name, error=str(exc))
                continue
            if self.on_renewed is not None:
                await self.on_renewed()

    async def close(self) -> None:
        """Revoke the lease: every key tied to it is deleted now."""
        self._closed = True
        if self.lease:
            with contextlib.suppress(StoreError):
                await self.store.revoke(self.lease)
