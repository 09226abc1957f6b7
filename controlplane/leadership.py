"""Leader election among control-plane replicas, and the work only the leader runs.

The key ``leader`` holds the leading replica's name, written with
``expect=0`` (only while nobody leads) and tied to the replica's lease
(controlplane/replica.py), so it goes when the leader stops renewing: at the
latest a lease ttl after the leader's death (revoked at once when it stops
cleanly). A replica that finds the key taken watches it and campaigns again
when it is deleted. While it leads, a replica runs the leader's work (each
a coroutine factory, started when it gains leadership and cancelled when it
loses it); it loses leadership when its lease ends.

With one replica on RocksDB or memory (LocalCoordination) the one replica
simply wins at once and leads for as long as it runs.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Coroutine, Sequence
from typing import Any

import structlog

from common.tasks import Tasks
from controlplane.replica import Held, ReplicaLease
from controlplane.store.protocol import (
    Change,
    Conflict,
    Coordinated,
    LeaseExpired,
    Put,
    StoreError,
    WatchLost,
)

log = structlog.get_logger(__name__)

LEADER_KEY = b"leader"

# One piece of the leader's work: its name (for logs) and what starts it.
Work = tuple[str, Callable[[], Coroutine[Any, Any, Any]]]


class Leadership:
    """Campaigns for ``leader`` under the replica's lease; runs ``work`` while leading."""

    def __init__(
        self,
        store: Coordinated,
        lease: ReplicaLease,
        name: str,
        work: Sequence[Work] = (),
        on_change: Callable[[bool], None] = lambda leading: None,
        retry: float = 0.5,
    ) -> None:
        self.store = store
        self.lease = lease
        self.name = name
        self.work = list(work)
        self.on_change = on_change
        self.retry = retry
        self.leading = False
        self.leader = ""  # the name last seen in the key ("" when not known)

    async def run(self) -> None:
        """Campaign, lead, and campaign again, until cancelled."""
        while True:
            held = await self.lease.current()
            try:
                won = await self._campaign(held)
            except StoreError as exc:
                log.warning("campaigning for leadership failed; trying again", error=str(exc))
                await asyncio.sleep(self.retry)
                continue
            if won:
                await self._lead(held)
            else:
                await self._await_vacancy(held)

    async def _campaign(self, held: Held) -> bool:
        """Write the leader key if nobody holds it; whether this replica now leads."""
        try:
            await self.store.commit([Put(LEADER_KEY, self.name.encode(), expect=0, lease=held.id)])
        except Conflict:
            return False
        except LeaseExpired:
            held.ended.set()  # the store ended it before the replica noticed
            return False
        return True

    async def _lead(self, held: Held) -> None:
        """Run the leader's work until the lease ends (or this task is cancelled)."""
        term = Tasks()
        self._set(True, self.name)
        log.info("leading: starting the leader's work", replica=self.name, lease=f"{held.id:x}")
        try:
            for name, start in self.work:
                term.spawn(start(), name=name)
            await held.ended.wait()
            log.warning("leadership lost: the replica's lease ended", replica=self.name)
        finally:
            await term.stop()
            self._set(False, "")

    async def _await_vacancy(self, held: Held) -> None:
        """Watch the leader key until it is deleted (or this replica's lease ends)."""
        try:
            async with self.store.watch(LEADER_KEY) as changes:
                item = await self.store.get(LEADER_KEY)
                if item is None:
                    return
                self._set(False, item.value.decode())
                if self.leader == self.name:
                    log.warning(
                        "the leader key names this replica under another lease: a previous "
                        "run's (it ends within its ttl), or another replica has the same "
                        "MINICLOUD_NAME",
                        replica=self.name,
                    )
                else:
                    log.info("following", replica=self.name, leader=self.leader)
                watching = asyncio.ensure_future(self._deleted(changes))
                ended = asyncio.ensure_future(held.ended.wait())
                try:
                    await asyncio.wait({watching, ended}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    for task in (watching, ended):
                        task.cancel()
                    await asyncio.gather(watching, ended, return_exceptions=True)
                if not watching.cancelled():
                    watching.result()  # raises what ended the watch (WatchLost, say)
        except WatchLost as exc:
            log.info("the leader watch was lost; looking again", error=str(exc))
        except StoreError as exc:
            log.warning("cannot watch the leader key; trying again", error=str(exc))
            await asyncio.sleep(self.retry)
        self._set(False, "")

    async def _deleted(self, changes: AsyncIterator[list[Change]]) -> None:
        """Returns once a change deletes the leader key."""
        async for batch in changes:
            for change in batch:
                if change.key != LEADER_KEY:
                    continue
                if change.item is None:
                    return
                self._set(False, change.item.value.decode())

    def _set(self, leading: bool, leader: str) -> None:
        was = self.leading
        self.leading, self.leader = leading, leader
        if was != leading:
            self.on_change(leading)
