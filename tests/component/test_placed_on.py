"""placed_on: the administrator puts a new instance on a chosen node (gRPC, REST, CLI)."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.app import ControlPlane
from protos import instances_pb2, nodes_pb2, nodes_pb2_grpc
from tests.component.conftest import (
    SYSTEM_KEY,
    Api,
    FakeNode,
    authed,
    create_request,
    make_api,
    namespace_api,
    start_fake_node,
)
from tests.component.test_gateway import start_gateway
from tests.component.test_gateway_nodes import sf, sf_client

CLI = Path(sys.executable).parent / "minicloud"


@dataclass
class Two:
    """A plane with node1 (big) and node2 (1 vCPU, 512 MiB), and system clients."""

    plane: ControlPlane
    channel: grpc.aio.Channel
    api: Api
    admin: Any
    node1: FakeNode
    node2: FakeNode


@pytest.fixture
async def two(plane: ControlPlane) -> AsyncIterator[Two]:
    """Two connected fake nodes."""
    target = f"127.0.0.1:{plane.port}"
    node1 = await start_fake_node(target, "node1")
    node2 = await start_fake_node(target, "node2", cpus=1, memory_mb=512)
    async with grpc.aio.insecure_channel(target) as channel:
        admin = await authed(nodes_pb2_grpc.NodeAdminServiceStub, channel)
        yield Two(plane, channel, await make_api(channel), admin, node1, node2)
    await node2.close()
    await node1.close()


def placed(name: str, node: str, **spec: Any) -> instances_pb2.CreateInstanceRequest:
    """A create request for a small instance with placed_on set."""
    request = create_request(name, **spec)
    request.placed_on = node
    return request


async def refused(api: Api, request: instances_pb2.CreateInstanceRequest) -> grpc.aio.AioRpcError:
    """The error a create fails with."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.Create(request)
    return err.value


async def test_system_places_an_instance_on_the_node_it_names(two: Two) -> None:
    """Placement, which prefers node1's free memory, puts the instance on node2 when asked."""
    unasked = await two.api.Create(create_request("free"))
    assert unasked.node == "node1"
    inst = await two.api.Create(placed("vm1", "node2"))
    assert inst.node == "node2"
    built = await two.api.wait_for(inst.uuid, lambda i: i.state == "created")
    assert built.node == "node2" and two.node2.hypervisor.domains
    events = await two.api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid))
    assert "schedule complete: placed on node2" in [e.message for e in events.events]


async def test_system_acting_in_another_namespace_may_place(two: Two) -> None:
    """The check is on the token: system with x-namespace creates there, on its node."""
    await namespace_api(two.channel, "tenant")
    inst = await two.api.Create(placed("vm1", "node2"), metadata=(("x-namespace", "tenant"),))
    assert inst.namespace == "tenant" and inst.node == "node2"


async def test_another_namespace_may_not_choose_the_node(two: Two) -> None:
    """placed_on from a namespace's own token is PERMISSION_DENIED, and nothing is made."""
    tenant = await namespace_api(two.channel, "tenant")
    err = await refused(tenant, placed("vm1", "node2"))
    assert err.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "placed_on" in (err.details() or "")
    listed = await tenant.List(instances_pb2.ListInstancesRequest())
    assert not listed.instances
    # Without placed_on the same create is fine.
    assert (await tenant.Create(create_request("vm1"))).node in ("node1", "node2")


async def test_an_unknown_node_is_refused_by_name(two: Two) -> None:
    """A node the cluster never saw is FAILED_PRECONDITION saying there is no such node."""
    err = await refused(two.api, placed("vm1", "node9"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "cannot place on node 'node9': no such node"
    long = await refused(two.api, placed("vm1", "n" * 70000))
    assert long.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert long.details() == "placed_on is a node name, at most 253 characters"


async def test_a_node_that_is_not_connected_is_refused_with_its_state(two: Two) -> None:
    """A known node whose stream is down is FAILED_PRECONDITION naming it and its state."""
    await two.node2.stop()
    for _ in range(500):
        info = await two.admin.GetNode(nodes_pb2.NodeRef(name="node2"))
        if info.state == "reconnecting":
            break
        await asyncio.sleep(0.02)
    err = await refused(two.api, placed("vm1", "node2"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == "cannot place on node node2: it is not connected (it is reconnecting)"


@pytest.mark.parametrize("verb", ["DisableNode", "DrainNode"])
async def test_a_disabled_or_draining_node_is_refused_with_why(two: Two, verb: str) -> None:
    """A connected node the administrator disabled or drains takes no new instance."""
    await getattr(two.admin, verb)(nodes_pb2.NodeRef(name="node2"))
    # An empty node's drain ends at once: it is disabled then.
    state = (await two.admin.GetNode(nodes_pb2.NodeRef(name="node2"))).state
    assert state in ("disabled", "draining")
    err = await refused(two.api, placed("vm1", "node2"))
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert err.details() == f"cannot place on node node2: it is {state} and takes no new instances"


async def test_capacity_is_still_checked_on_the_named_node(two: Two) -> None:
    """A node without room is RESOURCE_EXHAUSTED naming it; placement does not go elsewhere."""
    err = await refused(two.api, placed("vm1", "node2", memory=4096))
    assert err.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "node2: 768 MiB free, 4096 asked" in (err.details() or "")


async def test_hard_affinity_still_applies_to_the_named_node(two: Two) -> None:
    """require_with_tag rules the named node out as it would any node."""
    request = placed("vm1", "node2", metadata={"affinity": {"require_with_tag": ["db"]}})
    err = await refused(two.api, request)
    assert err.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "node2 hosts none of require_with_tag ['db']" in (err.details() or "")


async def minicloud(two: Two, *args: str, key: str = SYSTEM_KEY, ns: str = "system") -> Any:
    """Run the minicloud CLI with --json: (exit code, parsed output or stderr)."""
    env = {
        **os.environ,
        "MINICLOUD_API": f"127.0.0.1:{two.plane.port}",
        "MINICLOUD_NAMESPACE": ns,
        "MINICLOUD_KEY": key,
        "MINICLOUD_PLAINTEXT": "1",
    }
    proc = await asyncio.create_subprocess_exec(
        str(CLI),
        "--json",
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode == 0:
        return 0, json.loads(out)
    return proc.returncode, err.decode()


async def test_the_cli_creates_on_the_node_given_with_dash_dash_node(two: Two) -> None:
    """`minicloud instance create --node node2` puts it there; a tenant gets a clean refusal."""
    disk = "size=1,base=debian:11"
    code, inst = await minicloud(
        two, "instance", "create", "vm1", "--memory", "256", "--disk", disk, "--node", "node2"
    )
    assert code == 0 and inst["node"] == "node2"
    await namespace_api(two.channel, "tenant")
    code, err = await minicloud(
        two,
        "instance",
        "create",
        "vm2",
        "--memory",
        "256",
        "--disk",
        disk,
        "--node",
        "node2",
        key="tenant-key",
        ns="tenant",
    )
    assert code != 0 and "placed_on" in err and "Traceback" not in err


def sf_create(client: Any, name: str, node: str) -> Any:
    """shakenfist-client's create_instance with force_placement (sf-client's -p)."""
    disk = [{"size": 1, "base": "debian:11", "bus": None, "type": "disk"}]
    return client.create_instance(name, 1, 256, [], disk, None, None, force_placement=node)


async def test_the_client_library_places_through_the_gateway(two: Two) -> None:
    """The gateway passes the client's placed_on; refusals are the client's clean errors."""
    from shakenfist_client import apiclient

    runner, url = await start_gateway(f"127.0.0.1:{two.plane.port}")
    try:
        system = await sf(url)
        inst = await asyncio.to_thread(sf_create, system, "vm1", "node2")
        assert inst["node"] == "node2"
        with pytest.raises(apiclient.ResourceStateConflictException) as conflict:
            await asyncio.to_thread(sf_create, system, "vm2", "node9")
        assert "no such node" in conflict.value.text
        with pytest.raises(apiclient.InsufficientResourcesException) as full:
            await asyncio.to_thread(
                system.create_instance,
                "vm3",
                1,
                4096,
                [],
                [{"size": 1, "base": "debian:11"}],
                None,
                None,
                force_placement="node2",
            )
        assert "node2" in full.value.text
        await namespace_api(two.channel, "tenant")
        tenant = await sf(url, "tenant", "tenant-key")
        with pytest.raises(apiclient.UnauthenticatedException) as denied:
            await asyncio.to_thread(sf_create, tenant, "vm4", "node2")
        assert "placed_on" in denied.value.text
    finally:
        await runner.cleanup()


async def test_sf_client_instance_create_dash_p_places_the_instance(two: Two) -> None:
    """`sf-client instance create ... -p node2` runs unchanged and the instance is on node2."""
    runner, url = await start_gateway(f"127.0.0.1:{two.plane.port}")
    try:
        await sf_client(
            url, "instance", "create", "vm1", "1", "256", "-d", "1@debian:11", "-p", "node2"
        )
        shown = json.loads(await sf_client(url, "--json", "instance", "show", "vm1"))
        assert shown["node"] == "node2"
    finally:
        await runner.cleanup()
