"""Artifacts over gRPC: uploads, labels, versions, and disk bases that name them."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from controlplane.app import ControlPlane
from protos import artifacts_pb2, artifacts_pb2_grpc, instances_pb2
from tests.component.conftest import Api, FakeNode, authed, create_request


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
