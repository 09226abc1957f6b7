"""The replica's lease: one store lease per running control plane, kept alive while it runs.

Whatever a replica holds only while it is alive is written tied to this
lease: the leader key (controlplane/leadership.py) and, with several
replicas, anything else that must vanish with the replica. ``run`` grants
a lease, renews it every ttl/3 and, once it has ended (the store says so, or
no renewal got through for a whole ttl), grants a new one; ``current``
waits for a live lease and ``lease`` is its id (0 while there is none).
Whoever wrote keys under an ended lease must write them again under the new
one: ``Held.ended`` is set when that happens, and ``on_renewed`` is awaited
after every grant (the first too), so the node registry records again which
nodes' streams this replica holds (controlplane/presence.py).
``close`` revokes the lease, so what it held goes at once rather than a ttl
later.

The deadline is counted from when the last renewal that got through was
sent, which is before the store restarted its own clock: the replica gives
up its lease no later than the store ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import structlog

from controlplane.store.protocol import Coordinated, LeaseExpired, StoreError

log = structlog.get_logger(__name__)

# How often a renewal is tried again after one that did not get through (a share of ttl).
RETRY_SHARE = 10


@dataclass(eq=False)
class Held:
    """One granted lease, and an event set once it has ended (for this replica)."""

    id: int
    ended: asyncio.Event = field(default_factory=asyncio.Event)


class ReplicaLease:
    """This replica's lease in a coordinated store, renewed every ttl/3 and granted anew."""

    def __init__(
        self,
        store: Coordinated,
        ttl: float,
        name: str = "",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.ttl = ttl
        self.name = name
        self.clock = clock
        self._held: Held | None = None
        self._granted = asyncio.Event()
        self._closed = False
        self.on_renewed: Callable[[], Awaitable[None]] | None = None

    @property
    def lease(self) -> int:
        """The live lease's id, or 0 while none is granted."""
        held = self._held
        return held.id if held is not None and not held.ended.is_set() else 0

    async def current(self) -> Held:
        """The live lease, waiting until one is granted."""
        while True:
            held = self._held
            if held is not None and not held.ended.is_set():
                return held
            self._granted.clear()
            await self._granted.wait()

    async def run(self) -> None:
        """Grant, renew and grant again, until cancelled."""
        while not self._closed:
            try:
                lease = await self.store.grant(self.ttl)
            except StoreError as exc:
                log.warning("cannot grant the replica's lease; trying again", error=str(exc))
                await asyncio.sleep(self.ttl / RETRY_SHARE)
                continue
            held = Held(lease)
            self._held = held
            self._granted.set()
            log.info("replica lease granted", replica=self.name, lease=f"{lease:x}", ttl=self.ttl)
            if self.on_renewed is not None:
                try:
                    await self.on_renewed()
                except StoreError as exc:  # what it could not write is written at the next grant
                    log.warning("cannot record again under the new lease", error=str(exc))
            try:
                await self._renew(held)
            finally:
                held.ended.set()

    async def _renew(self, held: Held) -> None:
        """Renew held every ttl/3 until it ends (returns then)."""
        deadline = self.clock() + self.ttl
        while True:
            await asyncio.sleep(self.ttl / 3)
            while True:
                sent = self.clock()
                try:
                    await asyncio.wait_for(self.store.keep_alive(held.id), deadline - sent)
                    deadline = sent + self.ttl
                    break
                except LeaseExpired:
                    log.warning(
                        "the replica's lease ended", replica=self.name, lease=f"{held.id:x}"
                    )
                    return
                except (StoreError, TimeoutError) as exc:
                    if self.clock() >= deadline:
                        log.warning(
                            "no renewal of the replica's lease got through for its ttl; "
                            "giving it up",
                            replica=self.name,
                            lease=f"{held.id:x}",
                            error=str(exc) or "timed out",
                        )
                        with contextlib.suppress(StoreError, TimeoutError):
                            await asyncio.wait_for(self.store.revoke(held.id), self.ttl)
                        return
                    await asyncio.sleep(min(self.ttl / RETRY_SHARE, deadline - self.clock()))

    async def close(self) -> None:
        """Revoke the lease (what it held is deleted now); run grants no other."""
        self._closed = True
        held = self._held
        if held is None:
            return
        held.ended.set()
        with contextlib.suppress(StoreError, TimeoutError):
            await asyncio.wait_for(self.store.revoke(held.id), self.ttl)
