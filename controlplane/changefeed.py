"""The replica's feed of instance changes and events, from store watches to its hub.

Every replica watches the store's instance records (``inst/``) and event
logs (``ev/``) and hands each committed change to its own hub, so a Watch
stream on any replica sees what was committed through every replica, each
change once (Records itself publishes nothing). An instance's events go to
the instance's namespace (read from its record, and remembered); events of
other objects (nodes, networks, blobs, ...) only to system watchers.
Each watch keeps commit order; an instance change and the events committed
with it come through different watches, so either may reach a stream first.

When a store watch is lost (``WatchLost``: the store could not go on
without a gap) every subscription ends as overflowed, so each client
re-reads and watches again, and the feed watches again from now on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from controlplane.hub import Hub
from controlplane.model import decode_event, decode_instance
from controlplane.store.protocol import Change, Coordinated, StoreError

log = structlog.get_logger(__name__)

INSTANCES = b"inst/"  # controlplane/store/records.py's key layout
EVENTS = b"ev/"
# Instance namespaces remembered for their events (oldest dropped first).
NAMESPACES_KEPT = 100_000


class Changefeed:
    """Store watches on instances and events, published to one hub."""

    def __init__(self, store: Coordinated, hub: Hub, retry: float = 0.5) -> None:
        self.store = store
        self.hub = hub
        self.retry = retry
        self._namespaces: dict[str, str] = {}
        self._stack: contextlib.AsyncExitStack | None = None
        self._streams: list[AsyncIterator[list[Change]]] = []

    async def start(self) -> None:
        """Enter the watches: every change committed from now on is published (once ``run``s)."""
        stack = contextlib.AsyncExitStack()
        try:
            self._streams = [
                await stack.enter_async_context(self.store.watch(prefix))
                for prefix in (INSTANCES, EVENTS)
            ]
        except BaseException:
            await stack.aclose()
            raise
        self._stack = stack

    async def run(self) -> None:
        """Publish until cancelled, watching again (and ending every subscription) when lost."""
        try:
            while True:
                if self._stack is None:
                    try:
                        await self.start()
                    except StoreError as exc:
                        log.warning("cannot watch the store; trying again", error=str(exc))
                        await asyncio.sleep(self.retry)
                        continue
                try:
                    await self._feed()
                except StoreError as exc:  # WatchLost, or a read the feed needed failed
                    lost = self.hub.lose_all()
                    log.warning(
                        "store watch lost: Watch streams end, clients watch again",
                        error=str(exc),
                        subscriptions=lost,
                    )
                await self._close()
        finally:
            await self._close()

    async def _feed(self) -> None:
        """Publish from both watches until one of them raises."""
        instances, events = (
            asyncio.ensure_future(self._instances(self._streams[0])),
            asyncio.ensure_future(self._events(self._streams[1])),
        )
        try:
            done, _ = await asyncio.wait({instances, events}, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in (instances, events):
                task.cancel()
            await asyncio.gather(instances, events, return_exceptions=True)

    async def _instances(self, changes: AsyncIterator[list[Change]]) -> None:
        async for batch in changes:
            if not self.hub:
                continue  # nobody watches: nothing to decode
            for change in batch:
                if change.item is None:
                    continue
                instance = decode_instance(change.item.value).with_changes(
                    version=change.item.version
                )
                self._remember(instance.uuid, instance.namespace)
                self.hub.publish(instance.namespace, instance)

    async def _events(self, changes: AsyncIterator[list[Change]]) -> None:
        async for batch in changes:
            if not self.hub:
                continue
            for change in batch:
                if change.item is None:
                    continue  # pruned
                event = decode_event(change.item.value)
                self.hub.publish(await self._namespace_of(event.object_uuid), event)

    async def _namespace_of(self, uuid: str) -> str:
        """The namespace of the instance uuid names ("": not an instance, system watchers only)."""
        known = self._namespaces.get(uuid)
        if known is not None:
            return known
        item = await self.store.get(INSTANCES + uuid.encode())
        namespace = "" if item is None else decode_instance(item.value).namespace
        if item is not None:
            self._remember(uuid, namespace)
        return namespace

    def _remember(self, uuid: str, namespace: str) -> None:
        if uuid not in self._namespaces and len(self._namespaces) >= NAMESPACES_KEPT:
            del self._namespaces[next(iter(self._namespaces))]
        self._namespaces[uuid] = namespace

    async def _close(self) -> None:
        stack, self._stack = self._stack, None
        self._streams = []
        if stack is not None:
            with contextlib.suppress(Exception):
                await stack.aclose()
