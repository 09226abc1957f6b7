"""Nodes an operator can see and steer: NodeAdminService against a real plane and fake nodes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from controlplane.app import ControlPlane, start
from nodeagent.hypervisor.fake import FakeHypervisor
from protos import (
    instances_pb2,
    metadata_pb2,
    metadata_pb2_grpc,
    networks_pb2,
    networks_pb2_grpc,
    nodes_pb2,
    nodes_pb2_grpc,
)
from tests.component.conftest import (
    Api,
    Authed,
    FakeNode,
    authed,
    create_request,
    make_api,
    namespace_api,
    plane_settings,
    start_fake_node,
)

Ref = nodes_pb2.NodeRef


async def eventually(check: Callable[[], Awaitable[bool]], what: str, timeout: float = 10) -> None:
    """Wait until an async check holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


class Cloud:
    """A plane (missing deadline as given), system clients, a fake node that can be killed."""

    def __init__(self, plane: ControlPlane, channel: grpc.aio.Channel, api: Api, admin: Any):
        self.plane = plane
        self.channel = channel
        self.api = api
        self.admin = admin
        self.hypervisor = FakeHypervisor()
        self.node: FakeNode | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.plane.port}"

    async def start_node(self) -> None:
        self.node = await start_fake_node(self.target, "node1", hypervisor=self.hypervisor)

    async def kill_node(self) -> None:
        if self.node is not None:
            await self.node.stop()
            self.node = None

    async def node_state(self, name: str = "node1") -> str:
        found: nodes_pb2.NodeInfo = await self.admin.GetNode(Ref(name=name))
        return found.state


async def make_cloud(tmp_path: Path, missing_after: float) -> AsyncIterator[Cloud]:
    settings = replace(plane_settings(tmp_path / "cp"), node_missing_after=missing_after)
    plane = await start(settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        api = await make_api(channel)
        cloud = Cloud(
            plane, channel, api, await authed(nodes_pb2_grpc.NodeAdminServiceStub, channel)
        )
        await cloud.start_node()
        try:
            yield cloud
        finally:
            await cloud.kill_node()
            await cloud.hypervisor.close()
    await plane.stop(0)


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A plane whose nodes go missing after 60 s (not within a test) and one node."""
    async for found in make_cloud(tmp_path, 60.0):
        yield found


@pytest.fixture
async def quick(tmp_path: Path) -> AsyncIterator[Cloud]:
    """A plane whose nodes go missing 0.3 s after their stream is lost, and one node."""
    async for found in make_cloud(tmp_path, 0.3):
        yield found


async def test_list_and_get_show_what_the_node_registered_and_holds(cloud: Cloud) -> None:
    """A connected node is created, with its versions, capacity, commitments and instances."""
    listed = await cloud.admin.ListNodes(nodes_pb2.ListNodesRequest())
    assert [(n.name, n.state, n.connected) for n in listed.nodes] == [("node1", "created", True)]
    inst = await cloud.api.Create(create_request("vm1", cpus=2, memory=512))
    await cloud.api.wait_for(inst.uuid, lambda i: i.state == "created")
    node = await cloud.admin.GetNode(Ref(name="node1"))
    assert (node.qemu_version, node.libvirt_version) == ("8.2.0-fake", "9.0.0-fake")
    assert node.agent_version and node.hypervisor == "fake" and node.address == "127.0.0.1"
    assert (node.cpus, node.memory_mb) == (4, 8192) and node.disk_gb > 0
    assert (node.committed_cpus, node.committed_memory_mb, node.committed_disk_gb) == (2, 512, 1)
    assert [(i.uuid, i.name, i.power_state) for i in node.instances] == [(inst.uuid, "vm1", "on")]
    assert node.first_seen > 0 and node.last_seen >= node.first_seen
    listed = await cloud.admin.ListNodes(nodes_pb2.ListNodesRequest())
    assert listed.nodes[0].instance_count == 1
    events = await cloud.admin.GetNodeEvents(nodes_pb2.GetNodeEventsRequest(name="node1"))
    assert "node connected" in [e.message for e in events.events]


async def test_an_unknown_node_is_not_found(cloud: Cloud) -> None:
    """Asking for a node that never registered is NOT_FOUND."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cloud.admin.GetNode(Ref(name="nope"))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_disable_refuses_placement_with_a_reason_and_enable_allows_it(cloud: Cloud) -> None:
    """Nothing is placed on a disabled node (RESOURCE_EXHAUSTED naming why); enable undoes it."""
    disabled = await cloud.admin.DisableNode(Ref(name="node1"))
    assert disabled.state == "disabled" and disabled.connected
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cloud.api.Create(create_request("vm1"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "node1 is disabled" in (err.value.details() or "")
    assert (await cloud.admin.EnableNode(Ref(name="node1"))).state == "created"
    inst = await cloud.api.Create(create_request("vm1"))
    assert inst.node == "node1"
    events = await cloud.admin.GetNodeEvents(nodes_pb2.GetNodeEventsRequest(name="node1"))
    messages = [e.message for e in events.events]
    assert "state changed from created to disabled" in messages
    assert "state changed from disabled to created" in messages
    assert "disable requested" in messages


async def test_a_refused_state_change_is_failed_precondition(cloud: Cloud) -> None:
    """Enabling is fine on a created node; draining a deleted one is refused by the table."""
    await cloud.kill_node()
    await eventually(lambda: _is(cloud, "reconnecting"), "node1 reconnecting")
    await cloud.admin.DeleteNode(Ref(name="node1"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cloud.admin.DrainNode(Ref(name="node1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "cannot drain a node that is deleted" in (err.value.details() or "")


async def _is(cloud: Cloud, state: str) -> bool:
    return await cloud.node_state() == state


async def test_drain_reports_running_instances_as_blocking_and_stopped_as_to_move(
    cloud: Cloud,
) -> None:
    """DrainNode marks the node draining (placement skips it) and sorts its instances."""
    running = await cloud.api.Create(create_request("running"))
    stopped = await cloud.api.Create(create_request("stopped"))
    for inst in (running, stopped):
        await cloud.api.wait_for(inst.uuid, lambda i: i.power_state == "on")
    await cloud.api.PowerOff(instances_pb2.InstanceRef(ref=stopped.uuid))
    report = await cloud.admin.DrainNode(Ref(name="node1"))
    assert report.node.state == "draining"
    assert [i.uuid for i in report.blocking] == [running.uuid]
    assert [i.uuid for i in report.to_move] == [stopped.uuid]
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cloud.api.Create(create_request("vm3"))
    assert "node1 is draining" in (err.value.details() or "")


async def test_a_lost_stream_makes_the_node_reconnecting_and_its_instances_unknown(
    cloud: Cloud,
) -> None:
    """Killing the agent: node reconnecting, instance power unknown with an event; back: on."""
    inst = await cloud.api.Create(create_request("vm1"))
    await cloud.api.wait_for(inst.uuid, lambda i: i.power_state == "on")
    await cloud.kill_node()
    await eventually(lambda: _is(cloud, "reconnecting"), "node1 reconnecting")
    node = await cloud.admin.GetNode(Ref(name="node1"))
    assert not node.connected
    away = await cloud.api.wait_for(inst.uuid, lambda i: i.power_state == "unknown")
    assert away.state == "created"
    events = await cloud.api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid))
    assert any(
        e.message == "power state changed from on to unknown (node node1 is reconnecting)"
        for e in events.events
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await cloud.api.Create(create_request("vm2"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED

    await cloud.start_node()
    await eventually(lambda: _is(cloud, "created"), "node1 created again")
    back = await cloud.api.wait_for(inst.uuid, lambda i: i.power_state == "on")
    assert back.state == "created"


async def test_a_node_away_past_the_deadline_is_missing(quick: Cloud) -> None:
    """After MINICLOUD_NODE_MISSING_AFTER without a stream the node is missing."""
    await quick.kill_node()
    await eventually(lambda: _is(quick, "missing"), "node1 missing")
    events = await quick.admin.GetNodeEvents(nodes_pb2.GetNodeEventsRequest(name="node1"))
    assert "state changed from reconnecting to missing" in [e.message for e in events.events]
    await quick.start_node()
    await eventually(lambda: _is(quick, "created"), "node1 created again")


async def test_deleting_a_missing_node_errors_its_instances_and_releases_addresses(
    quick: Cloud,
) -> None:
    """Its instances go to error "node node1 was removed" and their addresses are freed."""
    nets = Authed(networks_pb2_grpc.NetworkServiceStub(quick.channel), quick.api.metadata)
    await nets.Create(
        networks_pb2.CreateNetworkRequest(
            name="net1", netblock="10.0.0.0/24", provide_dhcp=True, provide_nat=False
        )
    )
    inst = await quick.api.Create(
        create_request("vm1", networks=[{"network_uuid": "net1", "address": "10.0.0.10"}])
    )
    await quick.api.wait_for(inst.uuid, lambda i: i.state == "created")

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await quick.admin.DeleteNode(Ref(name="node1"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "node node1 is created and has 1 instance(s)" in (err.value.details() or "")

    await quick.kill_node()
    await eventually(lambda: _is(quick, "missing"), "node1 missing")
    deleted = await quick.admin.DeleteNode(Ref(name="node1"))
    assert deleted.state == "deleted" and not deleted.instances
    gone = await quick.api.wait_for(inst.uuid, lambda i: i.state == "error")
    assert gone.error_message == "node node1 was removed" and gone.node == ""
    reply = await nets.ListAddresses(networks_pb2.NetworkRef(ref="net1"))
    assert "10.0.0.10" not in {a.address for a in reply.addresses}
    listed = await quick.admin.ListNodes(nodes_pb2.ListNodesRequest())
    assert [(n.name, n.state) for n in listed.nodes] == [("node1", "deleted")]
    # The errored instance, now on no node, deletes at once.
    after = await quick.api.Delete(instances_pb2.InstanceRef(ref=inst.uuid))
    assert after.state == "deleted"


async def test_node_metadata_is_kept_on_the_node(cloud: Cloud) -> None:
    """Node metadata is set, read and deleted through the MetadataService."""
    meta = Authed(metadata_pb2_grpc.MetadataServiceStub(cloud.channel), cloud.api.metadata)
    value = struct_pb2.Value(string_value="rack-4")
    await meta.Set(
        metadata_pb2.SetMetadataRequest(object_type="node", ref="node1", key="rack", value=value)
    )
    node = await cloud.admin.GetNode(Ref(name="node1"))
    assert dict(node.metadata) == {"rack": "rack-4"}
    got = await meta.Get(metadata_pb2.MetadataRef(object_type="node", ref="node1"))
    assert dict(got.metadata) == {"rack": "rack-4"}
    await meta.Delete(
        metadata_pb2.DeleteMetadataRequest(object_type="node", ref="node1", key="rack")
    )
    assert dict((await cloud.admin.GetNode(Ref(name="node1"))).metadata) == {}


async def test_other_namespaces_may_not_see_or_steer_nodes(cloud: Cloud) -> None:
    """Every node call, node metadata too, is PERMISSION_DENIED outside the system namespace."""
    other = await namespace_api(cloud.channel, "tenant")
    admin = Authed(nodes_pb2_grpc.NodeAdminServiceStub(cloud.channel), other.metadata)
    calls = [
        admin.ListNodes(nodes_pb2.ListNodesRequest()),
        admin.GetNode(Ref(name="node1")),
        admin.DisableNode(Ref(name="node1")),
        admin.EnableNode(Ref(name="node1")),
        admin.DrainNode(Ref(name="node1")),
        admin.DeleteNode(Ref(name="node1")),
        admin.GetNodeEvents(nodes_pb2.GetNodeEventsRequest(name="node1")),
        Authed(metadata_pb2_grpc.MetadataServiceStub(cloud.channel), other.metadata).Get(
            metadata_pb2.MetadataRef(object_type="node", ref="node1")
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await cloud.node_state() == "created"
