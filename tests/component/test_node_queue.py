"""Two control-plane replicas on one store: a node connected to either serves both.

Both planes run in this process on ONE coordinated store (a MemoryStore in a
LocalCoordination), each with its own name, port and data folder; node agents
run over fake hypervisors.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.app import ControlPlane, start
from controlplane.store.local import LocalCoordination
from controlplane.store.memory import MemoryStore
from controlplane.store.protocol import Item, Op, Watch
from controlplane.usage import decode as decode_usage
from controlplane.usage import key as usage_key
from nodeagent.hypervisor.fake import FakeHypervisor
from protos import instances_pb2, nodes_pb2, nodes_pb2_grpc
from tests.component.conftest import (
    Api,
    FakeNode,
    authed,
    create_request,
    make_api,
    plane_settings,
    start_fake_node,
)

Ref = instances_pb2.InstanceRef


class SharedStore:
    """One coordinated store for several planes: stopping a plane leaves it open."""

    def __init__(self) -> None:
        self.inner = LocalCoordination(MemoryStore())

    async def get(self, key: bytes) -> Item | None:
        return await self.inner.get(key)

    async def scan(
        self,
        prefix: bytes,
        *,
        reverse: bool = False,
        limit: int | None = None,
        after: bytes | None = None,
    ) -> list[Item]:
        return await self.inner.scan(prefix, reverse=reverse, limit=limit, after=after)

    async def commit(self, ops: Sequence[Op]) -> None:
        await self.inner.commit(ops)

    async def close(self) -> None:
        pass

    def watch(self, prefix: bytes) -> Watch:
        return self.inner.watch(prefix)

    async def grant(self, ttl: float) -> int:
        return await self.inner.grant(ttl)

    async def keep_alive(self, lease: int) -> None:
        await self.inner.keep_alive(lease)

    async def revoke(self, lease: int) -> None:
        await self.inner.revoke(lease)


class CountingHypervisor(FakeHypervisor):
    """A fake hypervisor that counts the domains it is asked to define."""

    def __init__(self) -> None:
        super().__init__()
        self.defined: dict[str, int] = {}

    async def define_and_start(self, spec: Any, *args: Any, **kwargs: Any) -> Any:
        self.defined[spec.uuid] = self.defined.get(spec.uuid, 0) + 1
        return await super().define_and_start(spec, *args, **kwargs)


@dataclasses.dataclass
class Cluster:
    """Two planes on one store, and what the test started against them."""

    store: SharedStore
    a: ControlPlane
    b: ControlPlane
    nodes: list[FakeNode]


async def replica(store: SharedStore, folder: Path, name: str) -> ControlPlane:
    """A control plane named name on the shared store."""
    settings = dataclasses.replace(plane_settings(folder / name), name=name)
    return await start(settings, store=store)


@pytest.fixture
async def cluster(tmp_path: Path) -> AsyncIterator[Cluster]:
    """Replicas cp-a and cp-b on one store."""
    store = SharedStore()
    a = await replica(store, tmp_path, "cp-a")
    b = await replica(store, tmp_path, "cp-b")
    found = Cluster(store, a, b, [])
    yield found
    for node in found.nodes:
        await node.close()
    for plane in (b, a):
        if plane.port:
            await plane.stop(0)
    await store.inner.close()


async def api_of(plane: ControlPlane) -> tuple[grpc.aio.Channel, Api]:
    """A channel to the plane and an Api on it in the system namespace."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}")
    return channel, await make_api(channel)


async def eventually(check: Any, timeout: float = 10.0) -> None:
    """Wait until check() is true."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("timed out")
        await asyncio.sleep(0.02)


async def test_a_node_connected_to_one_replica_is_connected_for_the_other(
    cluster: Cluster,
) -> None:
    """B sees A's node as connected and created, and does not mark it reconnecting."""
    node = await start_fake_node(f"127.0.0.1:{cluster.a.port}")
    cluster.nodes.append(node)
    await eventually(lambda: cluster.b.nodes.connected("node1"))
    assert "node1" not in cluster.b.nodes.sessions
    assert [c.name for c in cluster.b.nodes.capacities()] == ["node1"]
    channel, _ = await api_of(cluster.b)
    async with channel:
        admin = await authed(nodes_pb2_grpc.NodeAdminServiceStub, channel)
        seen = await admin.GetNode(nodes_pb2.NodeRef(name="node1"))
    assert seen.connected and seen.state == "created"
    assert cluster.b.nodes.reconnecting() == []


async def test_a_node_whose_stream_ends_on_one_replica_is_reconnecting_for_the_other(
    cluster: Cluster,
) -> None:
    """When the node's stream on A ends, B counts it away (reconnecting), not connected."""
    node = await start_fake_node(f"127.0.0.1:{cluster.a.port}")
    await eventually(lambda: cluster.b.nodes.connected("node1"))
    await node.close()
    await eventually(lambda: not cluster.b.nodes.connected("node1"))
    await eventually(lambda: cluster.b.nodes.reconnecting() == ["node1"])


async def test_create_power_and_delete_through_the_replica_without_the_stream(
    cluster: Cluster,
) -> None:
    """An instance on A's node is created, powered off and on, and deleted through B."""
    hypervisor = CountingHypervisor()
    node = await start_fake_node(f"127.0.0.1:{cluster.a.port}", hypervisor=hypervisor)
    cluster.nodes.append(node)
    await eventually(lambda: cluster.b.nodes.connected("node1"))
    channel, api = await api_of(cluster.b)
    async with channel:
        inst = await api.Create(create_request("vm1"))
        assert inst.node == "node1"
        await api.wait_for(inst.uuid, lambda i: i.state == "created" and i.power_state == "on")
        ref = Ref(ref=inst.uuid)
        assert (await api.PowerOff(ref)).power_state == "off"
        assert hypervisor.domains[inst.uuid].power_state == "off"
        assert (await api.PowerOn(ref)).power_state == "on"
        await api.Delete(ref)
        await api.wait_for(inst.uuid, lambda i: i.state == "deleted")
    assert inst.uuid not in hypervisor.domains
    assert hypervisor.defined[inst.uuid] == 1
    # Every queued command was taken off its queue and every result collected.
    await eventually(lambda: not cluster.b.nodes._remote)
    assert await cluster.store.scan(b"nodecmd/") == []
    assert await cluster.store.scan(b"noderesult/") == []
    # And the node's room is back.
    item = await cluster.store.get(usage_key("node1"))
    assert item is not None and decode_usage(item.value) == (0, 0)


async def test_a_command_queued_for_a_stopped_replica_runs_once_after_the_node_moves(
    cluster: Cluster,
) -> None:
    """A create queued for A's node while A delivers nothing, then A stops: the node,
    reconnected to B, builds the instance once (its queued copy and B's resend alike)."""
    hypervisor = CountingHypervisor()
    node = await start_fake_node(f"127.0.0.1:{cluster.a.port}", hypervisor=hypervisor)
    await eventually(lambda: cluster.b.nodes.connected("node1"))
    assert cluster.a.nodes.queue is not None
    cluster.a.nodes.queue.on_command = None  # A is wedged: it delivers nothing queued
    channel, api = await api_of(cluster.b)
    async with channel:
        inst = await api.Create(create_request("vm1"))
        queued = await cluster.store.scan(b"nodecmd/node1/")
        for _ in range(100):
            if queued:
                break
            await asyncio.sleep(0.02)
            queued = await cluster.store.scan(b"nodecmd/node1/")
        assert [i.key.decode() for i in queued] == [f"nodecmd/node1/{inst.uuid}/1"]
        await node.stop()
        await cluster.a.stop(0)
        assert inst.uuid not in hypervisor.domains
        moved = await start_fake_node(f"127.0.0.1:{cluster.b.port}", hypervisor=hypervisor)
        cluster.nodes.append(moved)
        done = await api.wait_for(
            inst.uuid, lambda i: i.state == "created" and i.power_state == "on"
        )
    assert done.node == "node1"
    assert hypervisor.defined[inst.uuid] == 1
    await eventually(lambda: not cluster.b.nodes._remote)
    assert await cluster.store.scan(b"nodecmd/") == []


async def test_two_replicas_racing_creates_onto_one_small_node_never_overcommit_it(
    cluster: Cluster,
) -> None:
    """Creates through A and B at once onto one small node: exactly what fits is made,
    every other create is refused with RESOURCE_EXHAUSTED at once."""
    settings = cluster.a.parts.settings
    cpus, memory = 2, 1024
    fit = int(min(cpus * settings.cpu_overcommit, memory * settings.ram_overcommit // 256))
    node = await start_fake_node(f"127.0.0.1:{cluster.a.port}", cpus=cpus, memory_mb=memory)
    cluster.nodes.append(node)
    await eventually(lambda: cluster.b.nodes.connected("node1"))
    channel_a, api_a = await api_of(cluster.a)
    channel_b, api_b = await api_of(cluster.b)
    async with channel_a, channel_b:

        async def create(api: Api, name: str) -> grpc.StatusCode:
            try:
                await api.Create(create_request(name, memory=256))
            except grpc.aio.AioRpcError as exc:
                return exc.code()
            return grpc.StatusCode.OK

        tries = fit * 2 + 4
        codes = await asyncio.gather(
            *(create(api_a if n % 2 else api_b, f"vm{n}") for n in range(tries))
        )
    assert codes.count(grpc.StatusCode.OK) == fit
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}
    item = await cluster.store.get(usage_key("node1"))
    assert item is not None and decode_usage(item.value) == (fit, fit * 256)


async def test_a_node_recorded_reconnecting_while_its_stream_is_live_is_put_right(
    cluster: Cluster,
) -> None:
    """A node whose record says reconnecting (a replica that started while its stream was
    being recorded elsewhere guessed so) is recorded created again by the missing-nodes check,
    never moved to missing."""
    node = await start_fake_node(f"127.0.0.1:{cluster.a.port}")
    cluster.nodes.append(node)
    await eventually(lambda: cluster.b.nodes.connected("node1"))
    service = cluster.b.node_service
    stale = await service.records.get_node("node1")
    assert stale is not None
    now = service.clock()
    await service._write(
        stale,
        stale.with_changes(state="reconnecting", state_updated_at=now, disconnected_at=now),
        [],
    )
    assert await service.check_missing() == []
    fixed = await service.records.get_node("node1")
    assert fixed is not None and fixed.state == "created"
