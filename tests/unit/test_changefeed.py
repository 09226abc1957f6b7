"""The changefeed (controlplane/changefeed.py): store watches feeding a replica's hub."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from controlplane.changefeed import Changefeed
from controlplane.hub import Hub, Subscription
from controlplane.model import DiskSpec, Event, Instance, InstanceSpec
from controlplane.store.local import LocalCoordination
from controlplane.store.memory import MemoryStore
from controlplane.store.records import Records

UUID = "00000000-0000-4000-8000-000000000001"


def instance(uuid: str = UUID, namespace: str = "ns") -> Instance:
    spec = InstanceSpec(name="vm", cpus=1, memory=256, disks=(DiskSpec(1, "debian:11"),))
    return Instance(uuid=uuid, namespace=namespace, spec=spec)


def event(uuid: str, message: str) -> Event:
    return Event(uuid, "audit", message, 1.0)


@pytest.fixture
async def store() -> AsyncIterator[LocalCoordination]:
    made = LocalCoordination(MemoryStore())
    yield made
    await made.close()


@pytest.fixture
async def hub(store: LocalCoordination) -> AsyncIterator[Hub]:
    """A hub fed from the store by a running changefeed."""
    made = Hub()
    feed = Changefeed(store, made, retry=0.01)
    await feed.start()
    task = asyncio.create_task(feed.run())
    yield made
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


async def drain(sub: Subscription, wait: float = 0.1) -> list[object]:
    """Everything the subscription received within wait seconds."""
    await asyncio.sleep(wait)
    found: list[object] = []
    while not sub.queue.empty():
        found.append(sub.queue.get_nowait())
    return found


async def test_a_committed_instance_and_its_events_reach_its_namespace_once(
    store: LocalCoordination, hub: Hub
) -> None:
    """What Records commits reaches the namespace's and system watchers once, not other ones."""
    mine, system, other = hub.subscribe("ns"), hub.subscribe(""), hub.subscribe("elsewhere")
    records = Records(store)
    stored = await records.create_instance(instance(), [event(UUID, "created")])
    await records.add_events("ns", [event(UUID, "later")])
    for sub in (mine, system):
        got = await drain(sub)
        assert [u.version for u in got if isinstance(u, Instance)] == [stored.version]
        assert sorted(u.message for u in got if isinstance(u, Event)) == ["created", "later"]
    assert await drain(other, 0) == []


async def test_events_of_other_objects_reach_system_watchers_only(
    store: LocalCoordination, hub: Hub
) -> None:
    """An event whose object is no instance goes to system watchers, not to a namespace's."""
    mine, system = hub.subscribe("ns"), hub.subscribe("")
    await Records(store).add_events("ns", [event("node:n1", "drained")])
    assert [u.message for u in await drain(system) if isinstance(u, Event)] == ["drained"]
    assert await drain(mine, 0) == []


async def test_a_lost_store_watch_ends_every_subscription_and_the_feed_goes_on(
    store: LocalCoordination, hub: Hub
) -> None:
    """WatchLost marks every subscription overflowed and wakes its reader; new ones are fed."""
    old = hub.subscribe("ns")
    reader = asyncio.create_task(old.queue.get())
    await asyncio.sleep(0.01)
    for watch in list(store._watches):  # as the store does when a watch cannot go on
        watch.end("lost for the test")
    assert await asyncio.wait_for(reader, 1) is None
    assert old.overflowed
    hub.unsubscribe(old)
    await asyncio.sleep(0.05)  # the feed watches again
    new = hub.subscribe("ns")
    await Records(store).create_instance(instance(), [])
    assert [u.uuid for u in await drain(new) if isinstance(u, Instance)] == [UUID]
