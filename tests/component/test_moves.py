"""Moving a stopped instance between two fake nodes: disks via the blob store, networks along."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from common.nodewire.commands import ExportDisks
from common.nodewire.domain import DiskRequest
from controlplane.app import ControlPlane
from nodeagent.disks.protocol import DiskError
from protos import blobs_pb2, blobs_pb2_grpc, instances_pb2, networks_pb2, networks_pb2_grpc
from tests.component.conftest import (
    Api,
    Authed,
    FakeNode,
    create_request,
    make_api,
    namespace_api,
    start_fake_node,
)

Ref = instances_pb2.InstanceRef
Move = instances_pb2.MoveInstanceRequest


@dataclass
class Two:
    """A plane with two fake nodes and a system client."""

    plane: ControlPlane
    api: Api
    channel: grpc.aio.Channel
    nodes: dict[str, FakeNode]


@pytest.fixture
async def two(plane: ControlPlane) -> AsyncIterator[Two]:
    target = f"127.0.0.1:{plane.port}"
    node1 = await start_fake_node(target, "node1", address="192.0.2.1")
    node2 = await start_fake_node(target, "node2", address="192.0.2.2")
    async with grpc.aio.insecure_channel(target) as channel:
        yield Two(plane, await make_api(channel), channel, {"node1": node1, "node2": node2})
    await node1.close()
    await node2.close()


async def stopped(two: Two, name: str = "vm1", **spec: object) -> instances_pb2.Instance:
    """A created instance, powered off."""
    inst = await two.api.Create(create_request(name, **spec))
    await two.api.wait_for(inst.uuid, lambda i: i.state == "created" and i.power_state == "on")
    return await two.api.PowerOff(Ref(ref=inst.uuid))  # type: ignore[no-any-return]


def other(node: str) -> str:
    return "node2" if node == "node1" else "node1"


async def blob_bytes(two: Two, uuid: str) -> bytes:
    blobs = Authed(blobs_pb2_grpc.BlobServiceStub(two.channel), two.api.metadata)
    return b"".join([c.data async for c in blobs.Download(blobs_pb2.DownloadRequest(uuid=uuid))])


async def messages(two: Two, uuid: str) -> list[str]:
    reply = await two.api.GetEvents(instances_pb2.GetEventsRequest(ref=uuid, limit=200))
    return [e.message for e in reply.events]


async def test_a_stopped_instance_moves_with_its_disks_and_powers_on_there(two: Two) -> None:
    """The disks' content reaches the target as blobs; the instance stays off, then powers on."""
    inst = await stopped(two)
    source, target = two.nodes[inst.node], two.nodes[other(inst.node)]
    source.disks.contents[inst.uuid][0] = b"what the guest wrote"

    moved = await two.api.Move(Move(ref="vm1", node=target.name))

    assert (moved.node, moved.state, moved.power_state) == (target.name, "created", "off")
    assert inst.uuid not in source.hypervisor.domains
    assert inst.uuid not in source.disks.contents
    assert target.hypervisor.domains[inst.uuid].power_state == "off"
    base = target.disks.requests[inst.uuid][0].base
    assert base.startswith("sf://blob/") and moved.spec.disks[0].base == base
    assert await blob_bytes(two, base.removeprefix("sf://blob/")) == b"what the guest wrote"
    log = await messages(two, inst.uuid)
    assert f"moving to node {target.name}" in log
    assert f"moved from node {source.name}" in log
    assert f"old domain on node {source.name} removed" in log

    on = await two.api.PowerOn(Ref(ref="vm1"))
    assert (on.node, on.power_state) == (target.name, "on")
    assert target.hypervisor.domains[inst.uuid].power_state == "on"
    used = {c.name: c.used_memory_mb for c in two.plane.nodes.capacities()}
    assert used == {source.name: 0, target.name: 256}


async def test_without_a_node_placement_chooses_another_one(two: Two) -> None:
    """A move naming no node goes to the other node."""
    inst = await stopped(two)
    moved = await two.api.Move(Move(ref=inst.uuid))
    assert moved.node == other(inst.node)


async def test_a_running_instance_is_refused(two: Two) -> None:
    """A running instance cannot move: FAILED_PRECONDITION, and it stays where it is."""
    inst = await two.api.Create(create_request("vm1"))
    inst = await two.api.wait_for(inst.uuid, lambda i: i.power_state == "on")
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await two.api.Move(Move(ref="vm1", node=other(inst.node)))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "stop the instance first" in str(caught.value.details())
    after = await two.api.Get(Ref(ref="vm1"))
    assert (after.node, after.power_state) == (inst.node, "on")


async def test_moving_to_its_own_node_is_refused(two: Two) -> None:
    """The instance's own node is not a target."""
    inst = await stopped(two)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await two.api.Move(Move(ref="vm1", node=inst.node))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_only_the_system_namespace_may_move(two: Two) -> None:
    """Another namespace gets PERMISSION_DENIED."""
    team = await namespace_api(two.channel, "team")
    await team.Create(create_request("vm1"))
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await team.Move(Move(ref="vm1"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_failed_build_on_the_target_leaves_the_instance_on_its_source(
    two: Two, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When the target cannot build the domain nothing changes (same node, same disks),
    and the move can be tried again."""
    inst = await stopped(two)
    source, target = two.nodes[inst.node], two.nodes[other(inst.node)]

    async def refuse(*args: object) -> None:
        raise DiskError("no space left on the target")

    monkeypatch.setattr(target.disks, "prepare", refuse)
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await two.api.Move(Move(ref="vm1", node=target.name))
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "no space left" in str(caught.value.details())
    after = await two.api.Get(Ref(ref="vm1"))
    assert (after.node, after.power_state) == (source.name, "off")
    assert after.spec.disks[0].base == "debian:11"
    assert source.hypervisor.domains[inst.uuid].power_state == "off"
    assert inst.uuid not in target.hypervisor.domains
    used = {c.name: c.used_memory_mb for c in two.plane.nodes.capacities()}
    assert used == {source.name: 256, target.name: 0}
    assert f"move to node {target.name} failed" in " ".join(await messages(two, inst.uuid))

    monkeypatch.undo()
    again = await two.api.Move(Move(ref="vm1", node=target.name))
    assert again.node == target.name
    on = await two.api.PowerOn(Ref(ref="vm1"))
    assert (on.node, on.power_state) == (target.name, "on")


async def test_interfaces_follow_the_instance_to_the_target(two: Two) -> None:
    """The target carries the instance's network (with its lease) and builds its NIC there."""
    nets = Authed(networks_pb2_grpc.NetworkServiceStub(two.channel), two.api.metadata)
    net = await nets.Create(
        networks_pb2.CreateNetworkRequest(name="n", netblock="10.0.0.0/24", provide_dhcp=True)
    )
    inst = await stopped(two, networks=[{"network_uuid": "n"}])
    target = two.nodes[other(inst.node)]
    assert net.uuid not in target.network.networks

    moved = await two.api.Move(Move(ref="vm1", node=target.name))

    (nic,) = moved.interfaces
    config = target.network.networks[net.uuid]
    assert [(x.mac, x.address) for x in config.leases] == [(nic.macaddr, nic.ipv4)]
    built = target.hypervisor.specs[inst.uuid].interfaces
    assert [(n.mac, n.bridge) for n in built] == [
        (nic.macaddr, target.network.bridge_name(net.uuid))
    ]
    stored = await two.plane.parts.networks.networks.get_interface(nic.uuid)
    assert stored is not None and stored.node == target.name


async def test_a_node_refuses_to_export_a_running_guest(two: Two) -> None:
    """The node itself checks: exporting the disks of a running domain fails, nothing uploaded."""
    inst = await two.api.Create(create_request("vm1"))
    inst = await two.api.wait_for(inst.uuid, lambda i: i.power_state == "on")
    command = ExportDisks("test/export", inst.uuid, (DiskRequest(1, "debian:11"),))
    result = await asyncio.wait_for(two.plane.nodes.send(inst.node, command), 10)
    assert not result.ok and "stop the instance first" in result.error
    assert result.blobs == ()


async def test_evacuating_a_node_moves_its_stopped_instances_and_lists_running_ones(
    plane: ControlPlane,
) -> None:
    """Stopped instances leave the node; a running one is reported as blocking and stays."""
    address = f"127.0.0.1:{plane.port}"
    node1 = await start_fake_node(address, "node1")
    node2: FakeNode | None = None
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            api = await make_api(channel)
            made = {}
            for name in ("a", "b", "busy"):
                inst = await api.Create(create_request(name))
                made[name] = await api.wait_for(inst.uuid, lambda i: i.power_state == "on")
            for name in ("a", "b"):
                await api.PowerOff(Ref(ref=name))
            node2 = await start_fake_node(address, "node2")

            result = await plane.moves.evacuate("node1")

            assert result.moved == {made["a"].uuid: "node2", made["b"].uuid: "node2"}
            assert list(result.blocking) == [made["busy"].uuid]
            assert "stop the instance first" in result.blocking[made["busy"].uuid]
            assert not result.failed and not result.empty
            assert sorted(await plane.records.uuids_on_node("node1")) == [made["busy"].uuid]
            assert set(node2.hypervisor.domains) == {made["a"].uuid, made["b"].uuid}
    finally:
        await node1.close()
        if node2 is not None:
            await node2.close()
