"""Restarts and drift: the control plane and node agents converge after failures."""

from __future__ import annotations

from pathlib import Path

import grpc
import pytest

from controlplane.app import start
from nodeagent.hypervisor.fake import FakeHypervisor
from protos import instances_pb2
from tests.component.conftest import (
    Api,
    FakeNode,
    create_request,
    plane_settings,
    start_fake_node,
)

Ref = instances_pb2.InstanceRef


def on(i: instances_pb2.Instance) -> bool:
    return i.state == "created" and i.power_state == "on"


async def test_control_plane_restart_keeps_instances(tmp_path: Path) -> None:
    """After a control-plane restart every instance is still there and the node reconnects."""
    plane = await start(plane_settings(tmp_path / "cp"))
    port = plane.port
    node = await start_fake_node(f"127.0.0.1:{port}")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = Api(channel)
            uuids = [(await api.Create(create_request(f"vm{i}"))).uuid for i in range(3)]
            for uuid in uuids:
                await api.wait_for(uuid, on)
        await plane.stop(0)
        connections = node.link.connections
        plane = await start(plane_settings(tmp_path / "cp", port))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = Api(channel)
            listed = await api.List(instances_pb2.ListInstancesRequest(), wait_for_ready=True)
            assert sorted(i.uuid for i in listed.instances) == sorted(uuids)
            assert all(on(i) for i in listed.instances)
            await api.wait_for(uuids[0], lambda i: node.link.connections > connections)
            after = await api.PowerOff(Ref(ref=uuids[0]))
            assert after.power_state == "off"
    finally:
        await node.stop()
        await plane.stop(0)


async def test_node_agent_restart_converges(tmp_path: Path) -> None:
    """Guests outlive their node agent; changes made meanwhile show up after it returns."""
    plane = await start(plane_settings(tmp_path / "cp"))
    target = f"127.0.0.1:{plane.port}"
    hypervisor = FakeHypervisor()
    node = await start_fake_node(target, hypervisor=hypervisor)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            api = Api(channel)
            inst = await api.Create(create_request("survivor"))
            await api.wait_for(inst.uuid, on)
            await node.stop()
            assert hypervisor.domains[inst.uuid].power_state == "on"
            # While the agent is away the guest powers off, and a stray domain appears.
            hypervisor.external_power(inst.uuid, "off", "shutdown by guest")
            hypervisor.external_power("11111111-2222-4333-8444-555555555555", "on", "stray")
            node = await start_fake_node(target, hypervisor=hypervisor)
            seen = await api.wait_for(inst.uuid, lambda i: i.power_state == "off")
            assert seen.state == "created"
            await api.wait_for(
                inst.uuid,
                lambda i: "11111111-2222-4333-8444-555555555555" not in hypervisor.domains,
            )
    finally:
        await node.stop()
        await plane.stop(0)


async def test_domain_destroyed_behind_our_back(api: Api, node: FakeNode) -> None:
    """A domain stopped outside the agent shows power off and an event."""
    inst = await api.Create(create_request("victim"))
    await api.wait_for(inst.uuid, on)
    node.hypervisor.external_power(inst.uuid, "off", "destroyed")
    await api.wait_for(inst.uuid, lambda i: i.power_state == "off")
    events = (await api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid))).events
    assert any("destroyed" in e.message for e in events)


async def test_missing_domain_after_reconnect_is_an_error(tmp_path: Path) -> None:
    """A created instance whose domain vanished while the agent was away ends in error."""
    plane = await start(plane_settings(tmp_path / "cp"))
    target = f"127.0.0.1:{plane.port}"
    hypervisor = FakeHypervisor()
    node = await start_fake_node(target, hypervisor=hypervisor)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            api = Api(channel)
            inst = await api.Create(create_request("ghost"))
            await api.wait_for(inst.uuid, on)
            await node.stop()
            await hypervisor.remove(inst.uuid)
            node = await start_fake_node(target, hypervisor=hypervisor)
            failed = await api.wait_for(inst.uuid, lambda i: i.state == "error")
            assert "disappeared" in failed.error_message
    finally:
        await node.stop()
        await plane.stop(0)


async def test_delete_while_node_away_finishes_on_return(tmp_path: Path) -> None:
    """A delete asked while the node is away waits, then completes when it reconnects."""
    plane = await start(plane_settings(tmp_path / "cp"))
    target = f"127.0.0.1:{plane.port}"
    hypervisor = FakeHypervisor()
    node = await start_fake_node(target, hypervisor=hypervisor)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            api = Api(channel)
            inst = await api.Create(create_request("later"))
            await api.wait_for(inst.uuid, on)
            await node.stop()
            await api.wait_for(inst.uuid, lambda i: not plane.nodes.connected("node1"))
            waiting = await api.Delete(Ref(ref=inst.uuid))
            assert waiting.state == "delete-wait"
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await api.PowerOff(Ref(ref=inst.uuid))
            assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
            node = await start_fake_node(target, hypervisor=hypervisor)
            await api.wait_for(inst.uuid, lambda i: i.state == "deleted")
            assert inst.uuid not in hypervisor.domains
    finally:
        await node.stop()
        await plane.stop(0)


async def test_power_op_on_disconnected_node_is_unavailable(tmp_path: Path) -> None:
    """A power operation while the instance's node is away is UNAVAILABLE (retry later)."""
    plane = await start(plane_settings(tmp_path / "cp"))
    target = f"127.0.0.1:{plane.port}"
    node = await start_fake_node(target)
    try:
        async with grpc.aio.insecure_channel(target) as channel:
            api = Api(channel)
            inst = await api.Create(create_request("away"))
            await api.wait_for(inst.uuid, on)
            await node.stop()
            await api.wait_for(inst.uuid, lambda i: not plane.nodes.connected("node1"))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await api.PowerOff(Ref(ref=inst.uuid))
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        await plane.stop(0)
