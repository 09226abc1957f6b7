"""Node registries of two replicas on one store: presence and commands through the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import pytest

from common.nodewire.commands import Delivery, DestroyDomain
from common.nodewire.messages import Result
from common.tasks import Tasks
from controlplane.model import Node
from controlplane.nodequeue import CommandQueue
from controlplane.nodes import NodeRegistry
from controlplane.presence import Presence
from controlplane.replica import ReplicaLease
from controlplane.store.local import LocalCoordination
from controlplane.store.memory import MemoryStore
from controlplane.store.records import Records
from controlplane.usage import SharedUsage

NODE = Node(name="node1", address="10.0.0.1", cpus=4, memory_mb=4096, hypervisor="fake")


@dataclass
class Side:
    """One replica's registry and what runs it."""

    nodes: NodeRegistry
    replica: ReplicaLease
    tasks: Tasks


async def side(store: LocalCoordination, name: str) -> Side:
    replica = ReplicaLease(store, 10.0, name)
    tasks = Tasks()
    tasks.spawn(replica.run())
    await replica.current()
    nodes = NodeRegistry(
        None,
        tasks,
        SharedUsage(store),
        Presence(store, replica, lambda: 0.0),
        CommandQueue(store),
    )
    await nodes.load(store, Records(store))
    tasks.spawn(nodes.run(store))
    return Side(nodes, replica, tasks)


@pytest.fixture
async def pair() -> AsyncIterator[tuple[LocalCoordination, Side, Side]]:
    store = LocalCoordination(MemoryStore())
    a, b = await side(store, "cp-a"), await side(store, "cp-b")
    yield store, a, b
    for one in (a, b):
        await one.tasks.stop()
        await one.replica.close()
    await store.close()


async def eventually(check: Callable[[], bool]) -> None:
    for _ in range(250):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_a_stream_on_one_replica_is_connected_on_the_other(
    pair: tuple[LocalCoordination, Side, Side],
) -> None:
    """A's stream is recorded; B counts the node connected and places on it; at its
    end B no longer does."""
    _, a, b = pair
    session = a.nodes.connect(NODE, 0.0)
    await a.nodes.announce(session)
    await eventually(lambda: b.nodes.connected("node1"))
    assert [(c.name, c.cpus, c.memory_mb) for c in b.nodes.capacities()] == [("node1", 4, 4096)]
    a.nodes.disconnect(session)
    await a.nodes.withdraw(session)
    await eventually(lambda: not b.nodes.connected("node1"))


async def test_a_command_sent_by_the_other_replica_is_delivered_once_and_answered(
    pair: tuple[LocalCoordination, Side, Side],
) -> None:
    """B's command reaches A's stream once, and A's result resolves B's future; the queue
    and the result are gone afterwards."""
    store, a, b = pair
    session = a.nodes.connect(NODE, 0.0)
    await a.nodes.announce(session)
    await eventually(lambda: b.nodes.connected("node1"))
    future = b.nodes.send("node1", DestroyDomain("u1/2", "u1"))
    delivered = await asyncio.wait_for(session.outbox.get(), 2)
    assert isinstance(delivered, Delivery) and delivered.command == DestroyDomain("u1/2", "u1")
    a.nodes.resolve(session, Result("u1/2", "u1", True))
    result = await asyncio.wait_for(future, 2)
    assert result.ok and result.command_id == "u1/2"
    await eventually(lambda: session.outbox.empty() and not b.nodes._remote)
    for _ in range(50):
        if not await store.scan(b"noderesult/"):
            break
        await asyncio.sleep(0.01)
    assert await store.scan(b"nodecmd/") == []
    assert await store.scan(b"noderesult/") == []


async def test_commands_queued_before_the_stream_are_delivered_when_it_registers(
    pair: tuple[LocalCoordination, Side, Side],
) -> None:
    """A command left in a node's queue is delivered by the replica its node connects to."""
    store, a, _ = pair
    queue = CommandQueue(store)
    await queue.enqueue("node1", Delivery(DestroyDomain("u1/2", "u1"), "req-1"))
    session = a.nodes.connect(NODE, 0.0)
    await a.nodes.announce(session)
    delivered = await asyncio.wait_for(session.outbox.get(), 2)
    assert delivered == Delivery(DestroyDomain("u1/2", "u1"), "req-1")
    await asyncio.sleep(0.05)
    assert session.outbox.empty()  # once
