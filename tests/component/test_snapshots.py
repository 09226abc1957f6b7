"""Instance snapshots over gRPC with a fake node: artifacts, versions, labels, and use as a base."""

from __future__ import annotations

import grpc
import pytest

from controlplane.app import ControlPlane
from protos import artifacts_pb2, artifacts_pb2_grpc, blobs_pb2, blobs_pb2_grpc, instances_pb2
from tests.component.conftest import Api, Authed, FakeNode, create_request

Ref = instances_pb2.InstanceRef
Snap = instances_pb2.SnapshotInstanceRequest


async def running(api: Api, name: str = "vm1", **spec: object) -> instances_pb2.Instance:
    """A created instance, running."""
    inst = await api.Create(create_request(name, **spec))
    return await api.wait_for(inst.uuid, lambda i: i.state == "created" and i.power_state == "on")


async def blob_bytes(plane: ControlPlane, api: Api, uuid: str) -> bytes:
    """A blob's content."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        blobs = Authed(blobs_pb2_grpc.BlobServiceStub(channel), api.metadata)
        request = blobs_pb2.DownloadRequest(uuid=uuid)
        return b"".join([c.data async for c in blobs.Download(request)])


async def test_snapshot_makes_a_versioned_artifact_a_new_instance_boots_from(
    plane: ControlPlane, api: Api, node: FakeNode
) -> None:
    """The disk's content becomes version 1 of sf://snapshot/<uuid>/vda, listed, and usable."""
    inst = await running(api)
    node.disks.contents[inst.uuid][0] = b"what the guest wrote"
    reply = await api.Snapshot(Snap(ref="vm1"))
    (taken,) = reply.snapshots
    assert taken.device == "vda" and taken.artifact_index == 1
    assert taken.source_url == f"sf://snapshot/{inst.uuid}/vda"
    assert taken.consistency == "crash-consistent"  # no agent channel on this instance
    assert await blob_bytes(plane, api, taken.blob_uuid) == b"what the guest wrote"
    assert node.hypervisor.chains[inst.uuid]["vda"][0].name == "disk0.qcow2"

    listed = (await api.ListSnapshots(Ref(ref="vm1"))).snapshots
    assert [(s.device, s.index, s.blob_uuid, s.state) for s in listed] == [
        ("vda", 1, taken.blob_uuid, "created")
    ]
    events = await api.GetEvents(instances_pb2.GetEventsRequest(ref="vm1", limit=100))
    messages = [e.message for e in events.events]
    assert f"disk vda snapshotted as version 1 of {taken.source_url} (crash-consistent)" in messages

    copy = await running(api, "vm2", disks=[{"size_gb": 1, "base": taken.source_url}])
    assert copy.spec.disks[0].base == f"sf://blob/{taken.blob_uuid}"


async def test_versions_are_kept_to_the_maximum_and_a_label_follows_the_newest(
    api: Api, node: FakeNode
) -> None:
    """Four snapshots keep the newest three; a label names one disk's newest snapshot."""
    await running(api)
    for _ in range(3):
        await api.Snapshot(Snap(ref="vm1"))
    reply = await api.Snapshot(Snap(ref="vm1", device="vda", label_name="golden"))
    assert reply.snapshots[0].artifact_index == 4 and reply.snapshots[0].label_uuid
    listed = (await api.ListSnapshots(Ref(ref="vm1"))).snapshots
    assert [s.index for s in listed] == [2, 3, 4]
    copy = await running(api, "vm2", disks=[{"size_gb": 1, "base": "label:golden"}])
    assert copy.spec.disks[0].base == f"sf://blob/{reply.snapshots[0].blob_uuid}"


async def test_every_disk_but_cdroms_and_a_stopped_guest(api: Api, node: FakeNode) -> None:
    """All disks are snapshotted (the config drive and cdroms are not); stopped guests too."""
    disks = [
        {"size_gb": 1, "base": "debian:11"},
        {"size_gb": 2},
        {"size_gb": 0, "base": "debian:12", "type": "cdrom"},
    ]
    await running(api, disks=disks)
    await api.PowerOff(Ref(ref="vm1"))
    reply = await api.Snapshot(Snap(ref="vm1"))
    assert [(s.device, s.consistency) for s in reply.snapshots] == [
        ("vda", "stopped"),
        ("vdc", "stopped"),
    ]


async def test_refusals(plane: ControlPlane, api: Api, node: FakeNode) -> None:
    """An unknown device, a label for many disks and a thin snapshot of a non-blob disk."""
    await running(api, disks=[{"size_gb": 1, "base": "debian:11"}, {"size_gb": 1}])
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Snapshot(Snap(ref="vm1", device="vdq"))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Snapshot(Snap(ref="vm1", label_name="x"))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Snapshot(Snap(ref="vm1", device="vda", thin=True))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(create_request("vm3", disks=[{"size_gb": 1, "base": "sf://snapshot/x/y"}]))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_a_failed_pivot_is_retried_and_the_snapshot_still_kept(
    api: Api, node: FakeNode
) -> None:
    """A pivot that fails once on the node: the snapshot succeeds, the disk is one file again."""
    inst = await running(api)
    node.hypervisor.failures["pivot"] = 1
    reply = await api.Snapshot(Snap(ref="vm1"))
    assert reply.snapshots[0].artifact_index == 1
    assert len(node.hypervisor.chains[inst.uuid]["vda"]) == 1
    node.hypervisor.failures["pivot"] = 3
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Snapshot(Snap(ref="vm1"))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "could not be committed back" in (info.value.details() or "")
    listed = (await api.ListSnapshots(Ref(ref="vm1"))).snapshots
    assert [s.index for s in listed] == [1]


async def test_snapshot_artifacts_are_artifacts(
    plane: ControlPlane, api: Api, node: FakeNode
) -> None:
    """The snapshot artifact is found by type and name, with its versions."""
    inst = await running(api)
    await api.Snapshot(Snap(ref="vm1"))
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        artifacts = Authed(artifacts_pb2_grpc.ArtifactServiceStub(channel), api.metadata)
        art = await artifacts.GetArtifact(
            artifacts_pb2.ArtifactRef(ref=f"snapshot:{inst.uuid}/vda")
        )
    assert art.type == "snapshot" and art.source_url == f"sf://snapshot/{inst.uuid}/vda"
