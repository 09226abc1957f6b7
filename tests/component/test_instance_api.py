"""The instance API over a real gRPC socket, with a fake hypervisor underneath."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from controlplane.app import ControlPlane
from protos import instances_pb2
from tests.component.conftest import Api, FakeNode, create_request, namespace_api

Ref = instances_pb2.InstanceRef


def is_on(inst: instances_pb2.Instance) -> bool:
    return inst.state == "created" and inst.power_state == "on"


async def created(api: Api, name: str = "vm1", **overrides: Any) -> instances_pb2.Instance:
    inst = await api.Create(create_request(name, **overrides))
    return await api.wait_for(inst.uuid, is_on)


async def code_of(call: Any) -> grpc.StatusCode:
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call
    return info.value.code()


async def test_create_reaches_created_and_on(api: Api, node: FakeNode) -> None:
    """A created instance is placed on the node, built, and powered on."""
    inst = await api.Create(create_request("vm1"))
    assert inst.state == "creating"
    assert inst.node == "node1"
    assert inst.spec.disks[0].bus == "virtio"
    assert inst.spec.video.model == "cirrus"
    done = await api.wait_for(inst.uuid, is_on)
    assert done.namespace == "system"
    assert node.hypervisor.domains[inst.uuid].power_state == "on"


async def test_get_by_uuid_and_by_name(api: Api, node: FakeNode) -> None:
    """Get finds an instance by UUID and by name."""
    inst = await created(api)
    assert (await api.Get(Ref(ref=inst.uuid))).spec.name == "vm1"
    by_name = await api.Get(Ref(ref="vm1"))
    assert by_name.uuid == inst.uuid


async def test_namespaces_see_only_their_own_instances(
    api: Api, node: FakeNode, plane: ControlPlane
) -> None:
    """A namespace lists, gets and changes only its instances; system sees every namespace's."""
    a = await created(api, "a")
    await created(api, "b")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        other = await namespace_api(channel, "other")
        c = await other.Create(create_request("c"))
        other_names = [
            i.spec.name for i in (await other.List(instances_pb2.ListInstancesRequest())).instances
        ]
        assert other_names == ["c"]
        for call in (other.Get, other.Delete, other.PowerOff):
            assert await code_of(call(Ref(ref="a"))) == grpc.StatusCode.NOT_FOUND
            assert await code_of(call(Ref(ref=a.uuid))) == grpc.StatusCode.NOT_FOUND
        names = [
            i.spec.name for i in (await api.List(instances_pb2.ListInstancesRequest())).instances
        ]
        assert names == ["a", "b", "c"]
        assert (await api.Get(Ref(ref=c.uuid))).namespace == "other"


@pytest.mark.parametrize(
    ("op", "expected"),
    [("PowerOff", "off"), ("Pause", "paused")],
)
async def test_power_operations_change_power_state(
    api: Api, node: FakeNode, op: str, expected: str
) -> None:
    """Power off and pause change power_state and add an event."""
    inst = await created(api)
    after = await getattr(api, op)(Ref(ref=inst.uuid))
    assert after.power_state == expected
    events = (await api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid))).events
    assert any(f"to {expected}" in e.message for e in events)


async def test_power_cycle(api: Api, node: FakeNode) -> None:
    """Off, on, pause, unpause, soft and hard reboot each succeed in turn."""
    inst = await created(api)
    ref = Ref(ref=inst.uuid)
    assert (await api.PowerOff(ref)).power_state == "off"
    assert (await api.PowerOn(ref)).power_state == "on"
    assert (await api.Pause(ref)).power_state == "paused"
    assert (await api.Unpause(ref)).power_state == "on"
    assert (await api.SoftReboot(ref)).power_state == "on"
    assert (await api.HardReboot(ref)).power_state == "on"
    events = (await api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid))).events
    requested = [e.message for e in events if e.type == "audit"]
    assert requested[:6] == [
        "hard-reboot requested",
        "soft-reboot requested",
        "unpause requested",
        "pause requested",
        "on requested",
        "off requested",
    ]


async def test_power_op_not_allowed_is_failed_precondition(api: Api, node: FakeNode) -> None:
    """Unpausing a running instance is refused with FAILED_PRECONDITION."""
    inst = await created(api)
    assert await code_of(api.Unpause(Ref(ref=inst.uuid))) == grpc.StatusCode.FAILED_PRECONDITION
    await api.PowerOff(Ref(ref=inst.uuid))
    assert await code_of(api.Pause(Ref(ref=inst.uuid))) == grpc.StatusCode.FAILED_PRECONDITION


async def test_delete_keeps_record_readable_as_deleted(api: Api, node: FakeNode) -> None:
    """Delete removes the domain and leaves the record readable by UUID as deleted."""
    inst = await created(api)
    await api.Delete(Ref(ref=inst.uuid))
    gone = await api.wait_for(inst.uuid, lambda i: i.state == "deleted")
    assert gone.power_state == "off"
    assert inst.uuid not in node.hypervisor.domains
    assert await code_of(api.Get(Ref(ref="vm1"))) == grpc.StatusCode.NOT_FOUND
    listed = await api.List(instances_pb2.ListInstancesRequest())
    assert list(listed.instances) == []
    # The name is free again.
    await created(api, "vm1")


async def test_events_newest_first_with_type_filter_and_limit(api: Api, node: FakeNode) -> None:
    """Events come newest first, filtered by type and limited."""
    inst = await created(api)
    events = (await api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid))).events
    stamps = [e.timestamp for e in events]
    assert stamps == sorted(stamps, reverse=True)
    audit = (
        await api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid, event_type="audit"))
    ).events
    assert {e.type for e in audit} == {"audit"}
    one = (await api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid, limit=1))).events
    assert len(one) == 1 and one[0].timestamp == stamps[0]


async def test_watch_pushes_changes_and_events(api: Api, node: FakeNode) -> None:
    """Watch on an instance yields its current state, then changes and events as they happen."""
    inst = await created(api)
    stream = api.Watch(instances_pb2.WatchRequest(ref=inst.uuid))
    first = await stream.read()
    assert first.instance.power_state == "on"
    await api.PowerOff(Ref(ref=inst.uuid))
    seen: list[Any] = []
    while not any(u.HasField("instance") and u.instance.power_state == "off" for u in seen):
        seen.append(await asyncio.wait_for(stream.read(), 5))
    assert any(u.HasField("event") for u in seen)
    stream.cancel()


BAD_SPECS: list[tuple[str, dict[str, Any], str]] = [
    ("unknown bus", {"disks": [{"size_gb": 1, "bus": "floppy"}]}, "bus"),
    ("ide bus", {"disks": [{"size_gb": 1, "bus": "ide"}]}, "ide"),
    ("zero cpus", {"cpus": 0}, "cpus"),
    ("negative cpus", {"cpus": -1}, "cpus"),
    ("zero memory", {"memory": 0}, "memory"),
    ("negative memory", {"memory": -5}, "memory"),
    ("no disks", {"disks": []}, "disk"),
    ("bad name", {"name": "no spaces"}, "name"),
    ("unknown video", {"video": {"model": "matrox"}}, "video"),
    ("unknown vdi", {"video": {"vdi": "rdp"}}, "vdi"),
    ("bad mac", {"networks": [{"macaddress": "zz"}]}, "MAC"),
    ("bad nic model", {"networks": [{"model": "tulip"}]}, "model"),
    ("secure boot without uefi", {"secure_boot": True}, "uefi"),
]


@pytest.mark.parametrize(("label", "overrides", "word"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS])
async def test_bad_input_is_invalid_argument_and_leaves_nothing(
    api: Api, node: FakeNode, label: str, overrides: dict[str, Any], word: str
) -> None:
    """Bad create requests get INVALID_ARGUMENT with a message and store nothing."""
    request = create_request(
        "bad" if "name" not in overrides else overrides.pop("name"), **overrides
    )
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(request)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert word.lower() in (info.value.details() or "").lower()
    listed = await api.List(instances_pb2.ListInstancesRequest(include_deleted=True))
    assert list(listed.instances) == []
    assert node.hypervisor.domains == {}


async def test_duplicate_name_is_already_exists(api: Api, node: FakeNode) -> None:
    """A second instance with a taken name in the namespace is refused."""
    await api.Create(create_request("twin"))
    assert await code_of(api.Create(create_request("twin"))) == grpc.StatusCode.ALREADY_EXISTS
    listed = await api.List(instances_pb2.ListInstancesRequest())
    assert len(listed.instances) == 1


async def test_missing_base_ends_in_error_with_message(api: Api, node: FakeNode) -> None:
    """A base image that does not exist ends in error, with the reason, and no domain."""
    inst = await api.Create(
        create_request("nobase", disks=[{"size_gb": 1, "base": "/no/such.qcow2"}])
    )
    failed = await api.wait_for(inst.uuid, lambda i: i.state == "error")
    assert "/no/such.qcow2" in failed.error_message
    assert inst.uuid not in node.hypervisor.domains


async def test_unknown_instance_is_not_found(api: Api, node: FakeNode) -> None:
    """Every call on an unknown instance is NOT_FOUND."""
    ref = Ref(ref="00000000-0000-4000-8000-000000000000")
    for call in (
        api.Get,
        api.Delete,
        api.PowerOn,
        api.PowerOff,
        api.Pause,
        api.Unpause,
        api.SoftReboot,
        api.HardReboot,
    ):
        assert await code_of(call(ref)) == grpc.StatusCode.NOT_FOUND
    events_call = api.GetEvents(instances_pb2.GetEventsRequest(ref="nope"))
    assert await code_of(events_call) == grpc.StatusCode.NOT_FOUND


async def test_no_node_connected_is_resource_exhausted(api: Api) -> None:
    """With no node agent connected, create is RESOURCE_EXHAUSTED and says why."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(create_request("lonely"))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "no node" in (info.value.details() or "")


async def test_too_big_for_any_node_is_resource_exhausted(api: Api, node: FakeNode) -> None:
    """An instance larger than every node is refused and the reason names the node."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(create_request("huge", memory=1024 * 1024))
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "node1" in (info.value.details() or "")
