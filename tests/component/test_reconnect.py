"""Restarts and drift: the control plane and node agents converge after failures."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from controlplane.app import ControlPlane, start
from nodeagent.hypervisor.fake import FakeHypervisor
from protos import instances_pb2
from tests.component.conftest import (
    Api,
    FakeNode,
    create_request,
    make_api,
    plane_settings,
    start_fake_node,
)

Ref = instances_pb2.InstanceRef


def on(i: instances_pb2.Instance) -> bool:
    return i.state == "created" and i.power_state == "on"


class RestartableNode:
    """A fake node agent that can be killed and started again over the same fake guests."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.hypervisor = FakeHypervisor()
        self.current: FakeNode | None = None

    async def start(self) -> None:
        """Start the agent and wait until it has registered."""
        self.current = await start_fake_node(self.target, hypervisor=self.hypervisor)

    async def kill(self) -> None:
        """Stop the agent; its guests keep running."""
        if self.current is not None:
            await self.current.stop()
            self.current = None


@pytest.fixture
async def restartable(plane: ControlPlane) -> AsyncIterator[RestartableNode]:
    """A running node agent of the plane that tests may kill and restart."""
    node = RestartableNode(f"127.0.0.1:{plane.port}")
    await node.start()
    yield node
    await node.kill()


async def test_control_plane_restart_keeps_instances(tmp_path: Path) -> None:
    """After a control-plane restart every instance is still there and the node reconnects."""
    plane = await start(plane_settings(tmp_path / "cp"))
    port = plane.port
    node = await start_fake_node(f"127.0.0.1:{port}")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = await make_api(channel)
            uuids = [(await api.Create(create_request(f"vm{i}"))).uuid for i in range(3)]
            for uuid in uuids:
                await api.wait_for(uuid, on)
        await plane.stop(0)
        connections = node.stream.connections
        plane = await start(plane_settings(tmp_path / "cp", port))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = await make_api(channel)
            listed = await api.List(instances_pb2.ListInstancesRequest(), wait_for_ready=True)
            assert sorted(i.uuid for i in listed.instances) == sorted(uuids)
            assert all(on(i) for i in listed.instances)
            await api.wait_for(uuids[0], lambda i: node.stream.connections > connections)
            after = await api.PowerOff(Ref(ref=uuids[0]))
            assert after.power_state == "off"
    finally:
        await node.stop()
        await plane.stop(0)


async def test_node_agent_restart_converges(api: Api, restartable: RestartableNode) -> None:
    """Guests outlive their node agent; changes made meanwhile show up after it returns."""
    hypervisor = restartable.hypervisor
    inst = await api.Create(create_request("survivor"))
    await api.wait_for(inst.uuid, on)
    await restartable.kill()
    assert hypervisor.domains[inst.uuid].power_state == "on"
    # While the agent is away the guest powers off, and a stray domain appears.
    hypervisor.external_power(inst.uuid, "off", "shutdown by guest")
    hypervisor.external_power("11111111-2222-4333-8444-555555555555", "on", "stray")
    await restartable.start()
    seen = await api.wait_for(inst.uuid, lambda i: i.power_state == "off")
    assert seen.state == "created"
    await api.wait_for(
        inst.uuid,
        lambda i: "11111111-2222-4333-8444-555555555555" not in hypervisor.domains,
    )


async def test_domain_destroyed_behind_our_back(api: Api, node: FakeNode) -> None:
    """A domain stopped outside the agent shows power off and an event."""
    inst = await api.Create(create_request("victim"))
    await api.wait_for(inst.uuid, on)
    node.hypervisor.external_power(inst.uuid, "off", "destroyed")
    await api.wait_for(inst.uuid, lambda i: i.power_state == "off")
    events = (await api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid))).events
    assert any("destroyed" in e.message for e in events)


async def test_missing_domain_after_reconnect_is_an_error(
    api: Api, restartable: RestartableNode
) -> None:
    """A created instance whose domain vanished while the agent was away ends in error."""
    inst = await api.Create(create_request("ghost"))
    await api.wait_for(inst.uuid, on)
    await restartable.kill()
    await restartable.hypervisor.remove(inst.uuid)
    await restartable.start()
    failed = await api.wait_for(inst.uuid, lambda i: i.state == "error")
    assert "disappeared" in failed.error_message


async def test_delete_while_node_away_finishes_on_return(
    api: Api, plane: ControlPlane, restartable: RestartableNode
) -> None:
    """A delete asked while the node is away waits, then completes when it reconnects."""
    inst = await api.Create(create_request("later"))
    await api.wait_for(inst.uuid, on)
    await restartable.kill()
    await api.wait_for(inst.uuid, lambda i: not plane.nodes.connected("node1"))
    waiting = await api.Delete(Ref(ref=inst.uuid))
    assert waiting.state == "delete-wait"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.PowerOff(Ref(ref=inst.uuid))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    await restartable.start()
    await api.wait_for(inst.uuid, lambda i: i.state == "deleted")
    assert inst.uuid not in restartable.hypervisor.domains


async def test_power_op_on_disconnected_node_is_unavailable(
    api: Api, plane: ControlPlane, restartable: RestartableNode
) -> None:
    """A power operation while the instance's node is away is UNAVAILABLE (retry later)."""
    inst = await api.Create(create_request("away"))
    await api.wait_for(inst.uuid, on)
    await restartable.kill()
    await api.wait_for(inst.uuid, lambda i: not plane.nodes.connected("node1"))
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.PowerOff(Ref(ref=inst.uuid))
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
