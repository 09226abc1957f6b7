"""Artifacts over gRPC: uploads, labels, versions, deletion, blob lifetimes, events."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from controlplane.app import ControlPlane
from protos import artifacts_pb2, artifacts_pb2_grpc, blobs_pb2, blobs_pb2_grpc, instances_pb2
from tests.component.conftest import (
    Api,
    Authed,
    FakeNode,
    authed,
    create_request,
    namespace_api,
)


@pytest.fixture
async def artifacts(plane: ControlPlane) -> Any:
    """An ArtifactService stub authenticated as system."""
    return await authed(
        artifacts_pb2_grpc.ArtifactServiceStub, grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}")
    )


async def upload(artifacts: Any, name: str, data: bytes) -> artifacts_pb2.Artifact:
    async def parts() -> AsyncIterator[artifacts_pb2.ArtifactUploadChunk]:
        yield artifacts_pb2.ArtifactUploadChunk(name=name)
        yield artifacts_pb2.ArtifactUploadChunk(data=data)

    art: artifacts_pb2.Artifact = await artifacts.Upload(parts())
    return art


async def test_uploads_version_and_labels_point_at_blobs(artifacts: Any) -> None:
    """Each upload adds a version; a label names a blob; both are found by TYPE:NAME."""
    first = await upload(artifacts, "image", b"one")
    second = await upload(artifacts, "image", b"two")
    assert first.uuid == second.uuid
    assert [v.index for v in second.versions] == [1, 2]
    assert second.blob_uuid == second.versions[-1].blob_uuid != first.blob_uuid
    label = await artifacts.FromBlob(
        artifacts_pb2.FromBlobRequest(name="golden", blob_uuid=first.blob_uuid, type="label"),
    )
    found = await artifacts.GetArtifact(artifacts_pb2.ArtifactRef(ref="label:golden"))
    assert found.uuid == label.uuid and found.blob_uuid == first.blob_uuid
    listed = await artifacts.ListArtifacts(artifacts_pb2.ListArtifactsRequest())
    assert sorted((a.type, a.name) for a in listed.artifacts) == [
        ("label", "golden"),
        ("upload", "image"),
    ]


async def test_disk_bases_naming_artifacts_resolve_to_blobs(
    api: Api, node: FakeNode, artifacts: Any
) -> None:
    """label:, sf://upload/ and sf://blob/ bases become the blob the node fetches."""
    art = await upload(artifacts, "base", b"disk bytes")
    await artifacts.FromBlob(
        artifacts_pb2.FromBlobRequest(name="base", blob_uuid=art.blob_uuid, type="label"),
    )
    for i, base in enumerate(
        ("label:base", "sf://upload/system/base", f"sf://blob/{art.blob_uuid}")
    ):
        inst = await api.Create(create_request(f"a{i}", disks=[{"size_gb": 1, "base": base}]))
        assert inst.spec.disks[0].base == f"sf://blob/{art.blob_uuid}"
        await api.wait_for(inst.uuid, lambda i: i.state == "created")


@pytest.mark.parametrize(
    ("base", "code"),
    [
        ("label:missing", grpc.StatusCode.NOT_FOUND),
        ("sf://upload/system/missing", grpc.StatusCode.NOT_FOUND),
        ("sf://upload/other/x", grpc.StatusCode.NOT_FOUND),
        ("sf://blob/00000000-0000-4000-8000-000000000000", grpc.StatusCode.NOT_FOUND),
        ("sf://weird/thing", grpc.StatusCode.INVALID_ARGUMENT),
    ],
)
async def test_unknown_artifact_bases_are_refused_and_store_nothing(
    api: Api, node: FakeNode, base: str, code: grpc.StatusCode
) -> None:
    """A base naming a missing artifact or blob is refused before anything is stored."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(create_request("nope", disks=[{"size_gb": 1, "base": base}]))
    assert info.value.code() == code
    listed = await api.List(instances_pb2.ListInstancesRequest(include_deleted=True))
    assert list(listed.instances) == []


async def test_bad_artifact_requests(artifacts: Any) -> None:
    """Bad names, unknown types and unknown blobs are refused with clear codes."""
    cases = [
        (
            artifacts_pb2.FromBlobRequest(name="bad name", blob_uuid="x"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            artifacts_pb2.FromBlobRequest(name="ok", blob_uuid="x", type="weird"),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (artifacts_pb2.FromBlobRequest(name="ok", blob_uuid="missing"), grpc.StatusCode.NOT_FOUND),
    ]
    for request, code in cases:
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await artifacts.FromBlob(request)
        assert info.value.code() == code


@pytest.fixture
async def blobs(plane: ControlPlane) -> Any:
    """A BlobService stub authenticated as system."""
    return await authed(
        blobs_pb2_grpc.BlobServiceStub, grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}")
    )


async def code_of(call: Any) -> grpc.StatusCode:
    """The status a call ends with (OK when it succeeds)."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def ref(value: str) -> artifacts_pb2.ArtifactRef:
    return artifacts_pb2.ArtifactRef(ref=value)


async def download(blobs: Any, uuid: str) -> bytes:
    data = b""
    async for chunk in blobs.Download(blobs_pb2.DownloadRequest(uuid=uuid)):
        data += chunk.data
    return data


async def test_deleting_artifacts_frees_the_blobs_nothing_else_references(
    artifacts: Any, blobs: Any
) -> None:
    """A blob goes when its last version goes: state deleted, bytes and hash index gone."""
    art = await upload(artifacts, "doomed", b"doomed bytes")
    blob = art.blob_uuid
    await artifacts.FromBlob(
        artifacts_pb2.FromBlobRequest(name="keep", blob_uuid=blob, type="label")
    )
    assert (await blobs.GetBlob(blobs_pb2.BlobRef(uuid=blob))).reference_count == 2

    deleted = await artifacts.DeleteArtifact(ref("upload:doomed"))
    assert deleted.uuid == art.uuid and deleted.state == "deleted" and list(deleted.versions) == []
    assert await code_of(artifacts.GetArtifact(ref("upload:doomed"))) == grpc.StatusCode.NOT_FOUND
    assert (await artifacts.GetArtifact(ref(art.uuid))).state == "deleted"
    again = await artifacts.DeleteArtifact(ref(art.uuid))
    assert again.state == "deleted"
    kept = await blobs.GetBlob(blobs_pb2.BlobRef(uuid=blob))
    assert (kept.state, kept.reference_count) == ("created", 1)
    assert await download(blobs, blob) == b"doomed bytes"

    await artifacts.DeleteArtifact(ref("label:keep"))
    freed = await blobs.GetBlob(blobs_pb2.BlobRef(uuid=blob))
    assert (freed.state, freed.reference_count) == ("deleted", 0)
    assert await code_of(download(blobs, blob)) == grpc.StatusCode.NOT_FOUND
    found = await blobs.SearchBlobs(blobs_pb2.SearchBlobsRequest(sha512=freed.sha512))
    assert list(found.blobs) == []
    label = artifacts.FromBlob(
        artifacts_pb2.FromBlobRequest(name="x", blob_uuid=blob, type="label")
    )
    assert await code_of(label) == grpc.StatusCode.NOT_FOUND

    reborn = await upload(artifacts, "doomed", b"doomed bytes")
    assert reborn.uuid != art.uuid and reborn.blob_uuid != blob
    assert [v.index for v in reborn.versions] == [1]


async def test_a_blob_an_instance_uses_is_freed_only_after_the_instance_is_deleted(
    plane: ControlPlane, api: Api, node: FakeNode, artifacts: Any, blobs: Any
) -> None:
    """Deleting the artifact under a live instance's disk keeps the blob; the sweep frees it."""
    art = await upload(artifacts, "base", b"base disk")
    inst = await api.Create(
        create_request("user", disks=[{"size_gb": 1, "base": "sf://upload/system/base"}])
    )
    await api.wait_for(inst.uuid, lambda i: i.state == "created")
    await artifacts.DeleteArtifact(ref("upload:base"))
    kept = await blobs.GetBlob(blobs_pb2.BlobRef(uuid=art.blob_uuid))
    assert (kept.state, kept.reference_count, list(kept.instances)) == ("created", 0, [inst.uuid])
    assert await plane.parts.blob_service.sweep_once() == 0

    await api.Delete(instances_pb2.InstanceRef(ref=inst.uuid))
    await api.wait_for(inst.uuid, lambda i: i.state == "deleted")
    assert await plane.parts.blob_service.sweep_once() == 1
    assert (await blobs.GetBlob(blobs_pb2.BlobRef(uuid=art.blob_uuid))).state == "deleted"


async def test_delete_all_needs_confirm_and_empties_only_the_callers_namespace(
    plane: ControlPlane, artifacts: Any
) -> None:
    """Another namespace's delete-all leaves system's artifacts; without confirm nothing goes."""
    await upload(artifacts, "sys-image", b"system's")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        team = await namespace_api(channel, "team")
        mine = Authed(artifacts_pb2_grpc.ArtifactServiceStub(channel), team.metadata)
        await upload(mine, "one", b"1")
        await upload(mine, "two", b"2")
        refused = mine.DeleteAllArtifacts(artifacts_pb2.DeleteAllArtifactsRequest())
        assert await code_of(refused) == grpc.StatusCode.INVALID_ARGUMENT
        gone = await mine.DeleteAllArtifacts(artifacts_pb2.DeleteAllArtifactsRequest(confirm=True))
        assert sorted(a.name for a in gone.artifacts) == ["one", "two"]
        assert all(a.state == "deleted" for a in gone.artifacts)
        left = await mine.ListArtifacts(artifacts_pb2.ListArtifactsRequest())
        assert list(left.artifacts) == []
        # system acting in team (x-namespace) empties team, not system.
        await upload(mine, "three", b"3")
        emptied = await artifacts.DeleteAllArtifacts(
            artifacts_pb2.DeleteAllArtifactsRequest(confirm=True),
            metadata=(("x-namespace", "team"),),
        )
        assert [a.name for a in emptied.artifacts] == ["three"]
    listed = await artifacts.ListArtifacts(artifacts_pb2.ListArtifactsRequest())
    assert [a.name for a in listed.artifacts] == ["sys-image"]


async def test_versions_are_capped_indexed_past_the_highest_and_deleted_one_by_one(
    artifacts: Any, blobs: Any
) -> None:
    """Default 3 kept, the oldest dropped and its blob freed; an index is never reused."""
    made = [await upload(artifacts, "img", f"v{i}".encode()) for i in range(1, 5)]
    art = made[-1]
    assert [v.index for v in art.versions] == [2, 3, 4]
    assert (art.max_versions, art.index) == (3, 4)
    first = await blobs.GetBlob(blobs_pb2.BlobRef(uuid=made[0].blob_uuid))
    assert first.state == "deleted"

    listed = await artifacts.ListVersions(ref("upload:img"))
    assert [(v.index, v.size) for v in listed.versions] == [(2, 2), (3, 2), (4, 2)]
    after = await artifacts.DeleteVersion(artifacts_pb2.DeleteVersionRequest(ref=art.uuid, index=3))
    assert [v.index for v in after.versions] == [2, 4]
    newer = await upload(artifacts, "img", b"v5")
    assert [v.index for v in newer.versions] == [2, 4, 5] and newer.index == 5

    one = await artifacts.SetMaxVersions(
        artifacts_pb2.SetMaxVersionsRequest(ref=art.uuid, max_versions=1)
    )
    assert [v.index for v in one.versions] == [5] and one.max_versions == 1
    newest = await upload(artifacts, "img", b"v6")
    assert [v.index for v in newest.versions] == [6]
    for request, code in (
        (
            artifacts_pb2.SetMaxVersionsRequest(ref=art.uuid, max_versions=0),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            artifacts_pb2.SetMaxVersionsRequest(ref=art.uuid, max_versions=1001),
            grpc.StatusCode.INVALID_ARGUMENT,
        ),
        (
            artifacts_pb2.SetMaxVersionsRequest(ref="upload:nope", max_versions=2),
            grpc.StatusCode.NOT_FOUND,
        ),
    ):
        assert await code_of(artifacts.SetMaxVersions(request)) == code
    missing = artifacts.DeleteVersion(artifacts_pb2.DeleteVersionRequest(ref=art.uuid, index=5))
    assert await code_of(missing) == grpc.StatusCode.NOT_FOUND

    last = await artifacts.DeleteVersion(artifacts_pb2.DeleteVersionRequest(ref=art.uuid, index=6))
    assert last.state == "deleted" and list(last.versions) == []
    assert await code_of(artifacts.GetArtifact(ref("upload:img"))) == grpc.StatusCode.NOT_FOUND


async def test_artifact_and_blob_changes_are_recorded_as_events(artifacts: Any, blobs: Any) -> None:
    """Creation, versions, limits and deletion are events of the artifact and of its blobs."""
    art = await upload(artifacts, "evt", b"e1")
    await upload(artifacts, "evt", b"e2")
    await artifacts.SetMaxVersions(
        artifacts_pb2.SetMaxVersionsRequest(ref=art.uuid, max_versions=1)
    )
    await artifacts.DeleteArtifact(ref(art.uuid))
    found = await artifacts.GetEvents(instances_pb2.GetEventsRequest(ref=art.uuid))
    assert [e.message for e in reversed(found.events)] == [
        "artifact created",
        "version 1 added",
        "version 2 added",
        "max versions set to 1",
        "version 1 dropped: more than 1 versions",
        "artifact deleted",
    ]
    assert all(e.type == "mutate" for e in found.events)
    by_name = artifacts.GetEvents(instances_pb2.GetEventsRequest(ref="upload:evt"))
    assert await code_of(by_name) == grpc.StatusCode.NOT_FOUND  # deleted: by UUID only
    blob_events = await blobs.GetEvents(instances_pb2.GetEventsRequest(ref=art.blob_uuid))
    assert [e.message for e in reversed(blob_events.events)] == [
        "blob created",
        "reference added",
        "reference removed",
        "blob freed: nothing uses it",
    ]
    bad = blobs.GetEvents(instances_pb2.GetEventsRequest(ref=art.blob_uuid, event_type="weird"))
    assert await code_of(bad) == grpc.StatusCode.INVALID_ARGUMENT


async def test_list_blobs_shows_system_everything_and_a_namespace_its_own(
    plane: ControlPlane, artifacts: Any, blobs: Any
) -> None:
    """system lists every live blob; another namespace only those its artifacts reference."""
    theirs = await upload(artifacts, "system-only", b"system bytes")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        team = await namespace_api(channel, "team")
        mine = await upload(
            Authed(artifacts_pb2_grpc.ArtifactServiceStub(channel), team.metadata), "t", b"team's"
        )
        team_blobs = Authed(blobs_pb2_grpc.BlobServiceStub(channel), team.metadata)
        listed = await team_blobs.ListBlobs(blobs_pb2.ListBlobsRequest())
        assert [b.uuid for b in listed.blobs] == [mine.blob_uuid]
    everything = await blobs.ListBlobs(blobs_pb2.ListBlobsRequest())
    assert {theirs.blob_uuid, mine.blob_uuid} <= {b.uuid for b in everything.blobs}


async def test_a_shared_system_artifact_is_seen_and_used_by_every_namespace(
    plane: ControlPlane, node: FakeNode, artifacts: Any
) -> None:
    """Shared: listed, found by name, a base in another namespace's create; system alone edits."""
    art = await upload(artifacts, "debian-11", b"debian bytes")
    await artifacts.FromBlob(
        artifacts_pb2.FromBlobRequest(name="golden", blob_uuid=art.blob_uuid, type="label")
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        team = await namespace_api(channel, "team")
        theirs = Authed(artifacts_pb2_grpc.ArtifactServiceStub(channel), team.metadata)
        base = [{"size_gb": 1, "base": "sf://upload/system/debian-11"}]
        hidden = team.Create(create_request("t0", disks=base))
        assert await code_of(hidden) == grpc.StatusCode.NOT_FOUND
        assert await code_of(theirs.GetArtifact(ref(art.uuid))) == grpc.StatusCode.NOT_FOUND

        shared = await artifacts.Share(ref("upload:debian-11"))
        assert shared.shared
        await artifacts.Share(ref("label:golden"))
        assert (await theirs.GetArtifact(ref("upload:debian-11"))).uuid == art.uuid
        listed = await theirs.ListArtifacts(artifacts_pb2.ListArtifactsRequest())
        assert sorted(a.name for a in listed.artifacts) == ["debian-11", "golden"]
        versions = await theirs.ListVersions(ref(art.uuid))
        assert [v.index for v in versions.versions] == [1]
        for i, disk in enumerate(("sf://upload/system/debian-11", "label:golden")):
            inst = await team.Create(
                create_request(f"t{i + 1}", disks=[{"size_gb": 1, "base": disk}])
            )
            assert inst.spec.disks[0].base == f"sf://blob/{art.blob_uuid}"
            await team.wait_for(inst.uuid, lambda i: i.state == "created")

        for call in (
            theirs.DeleteArtifact(ref(art.uuid)),
            theirs.DeleteVersion(artifacts_pb2.DeleteVersionRequest(ref=art.uuid, index=1)),
            theirs.SetMaxVersions(
                artifacts_pb2.SetMaxVersionsRequest(ref=art.uuid, max_versions=1)
            ),
            theirs.Unshare(ref(art.uuid)),
        ):
            assert await code_of(call) == grpc.StatusCode.PERMISSION_DENIED
        own = await upload(theirs, "own", b"team's own")
        refused = theirs.Share(ref(own.uuid))
        assert await code_of(refused) == grpc.StatusCode.FAILED_PRECONDITION
        gone = await theirs.DeleteAllArtifacts(
            artifacts_pb2.DeleteAllArtifactsRequest(confirm=True)
        )
        assert [a.name for a in gone.artifacts] == ["own"]

        unshared = await artifacts.Unshare(ref(art.uuid))
        assert not unshared.shared
        assert await code_of(theirs.GetArtifact(ref(art.uuid))) == grpc.StatusCode.NOT_FOUND
        later = team.Create(create_request("t9", disks=base))
        assert await code_of(later) == grpc.StatusCode.NOT_FOUND
    found = await artifacts.GetEvents(instances_pb2.GetEventsRequest(ref=art.uuid))
    assert [e.message for e in found.events][:2] == ["artifact unshared", "artifact shared"]
