"""Metadata over gRPC: round trips on instances, blobs and artifacts; checks; isolation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from controlplane.api.convert import struct_to_dict
from controlplane.app import ControlPlane
from protos import (
    artifacts_pb2,
    artifacts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    instances_pb2,
    metadata_pb2,
    metadata_pb2_grpc,
)
from tests.component.conftest import Api, FakeNode, authed, create_request, make_api

# Calls are made by system, acting in these namespaces (x-namespace) where named.
SYSTEM: tuple[tuple[str, str], ...] = ()
TEAM = (("x-namespace", "team"),)
OTHER = (("x-namespace", "other"),)


@pytest.fixture
async def meta(plane: ControlPlane) -> AsyncIterator[Any]:
    """A MetadataService stub authenticated as system; namespaces team and other exist."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        namespaces = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
        for name in ("team", "other"):
            await namespaces.Create(auth_pb2.CreateNamespaceRequest(name=name))
        yield await authed(metadata_pb2_grpc.MetadataServiceStub, channel)


def value(v: Any) -> struct_pb2.Value:
    """A JSON value as a protobuf Value."""
    out = struct_pb2.Value()
    holder = struct_pb2.Struct()
    holder.update({"v": v})
    out.CopyFrom(holder.fields["v"])
    return out


def as_dict(md: metadata_pb2.Metadata) -> dict[str, Any]:
    return struct_to_dict(md.metadata)


async def set_key(
    meta: Any, kind: str, ref: str, key: str, v: Any, ns: Any = SYSTEM
) -> dict[str, Any]:
    request = metadata_pb2.SetMetadataRequest(object_type=kind, ref=ref, key=key, value=value(v))
    return as_dict(await meta.Set(request, metadata=ns))


async def get_all(meta: Any, kind: str, ref: str, ns: Any = SYSTEM) -> dict[str, Any]:
    return as_dict(await meta.Get(metadata_pb2.MetadataRef(object_type=kind, ref=ref), metadata=ns))


async def test_instance_metadata_round_trips_any_json(api: Api, node: FakeNode, meta: Any) -> None:
    """Values of every JSON type come back as set; the instance carries them too."""
    inst = await api.Create(create_request(metadata={"tags": ["web"], "owner": "ann"}))
    assert await get_all(meta, "instance", "vm1") == {"tags": ["web"], "owner": "ann"}
    values = {"n": 3, "f": 1.5, "s": "x", "b": False, "z": None, "l": [1, "a"], "o": {"k": [2]}}
    for key, v in values.items():
        await set_key(meta, "instance", inst.uuid, key, v)
    assert await get_all(meta, "instance", inst.uuid) == {
        "tags": ["web"],
        "owner": "ann",
        **values,
    }
    after = await meta.Delete(
        metadata_pb2.DeleteMetadataRequest(object_type="instance", ref="vm1", key="owner"),
        metadata=SYSTEM,
    )
    assert "owner" not in as_dict(after)
    again = await meta.Delete(
        metadata_pb2.DeleteMetadataRequest(object_type="instance", ref="vm1", key="owner"),
        metadata=SYSTEM,
    )
    assert as_dict(again) == as_dict(after)
    shown = await api.Get(instances_pb2.InstanceRef(ref="vm1"))
    assert shown.metadata["tags"] == ["web"] and shown.metadata["s"] == "x"
    assert shown.spec.metadata["owner"] == "ann"


async def test_set_records_a_mutate_event(api: Api, node: FakeNode, meta: Any) -> None:
    """Setting a key adds a mutate event "set metadata" naming the key."""
    await api.Create(create_request())
    await set_key(meta, "instance", "vm1", "colour", "blue")
    events = await api.GetEvents(instances_pb2.GetEventsRequest(ref="vm1", event_type="mutate"))
    found = [e for e in events.events if e.message == "set metadata"]
    assert len(found) == 1
    assert (found[0].extra["key"], found[0].extra["value"]) == ("colour", "blue")


@pytest.mark.parametrize(
    ("key", "v", "message"),
    [
        ("tags", "web", "'tags' must be a JSON list"),
        ("tags", {"a": 1}, "'tags' must be a JSON list"),
        ("affinity", ["web"], "'affinity' must be a JSON object"),
        ("affinity", {"web": "lots"}, "must be an integer"),
        ("affinity", {"web": 1.5}, "must be an integer"),
        ("", 1, "key is required"),
    ],
)
async def test_bad_reserved_values_are_invalid_argument(
    api: Api, node: FakeNode, meta: Any, key: str, v: Any, message: str
) -> None:
    """Bad tags/affinity values are refused on set, and nothing changes."""
    await api.Create(create_request())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await set_key(meta, "instance", "vm1", key, v)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert message in (info.value.details() or "")
    assert await get_all(meta, "instance", "vm1") == {}


async def test_bad_metadata_on_create_is_invalid_argument(api: Api, node: FakeNode) -> None:
    """A create whose affinity is not tag -> integer is refused."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(create_request(metadata={"affinity": {"web": "x"}}))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_missing_value_and_unknown_type_are_invalid_argument(
    api: Api, node: FakeNode, meta: Any
) -> None:
    """A set without a value, or on an unknown object type, says what is wrong."""
    await api.Create(create_request())
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await meta.Set(
            metadata_pb2.SetMetadataRequest(object_type="instance", ref="vm1", key="k"),
            metadata=SYSTEM,
        )
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_all(meta, "spaceship", "vm1")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "known types: artifact, blob, instance" in (info.value.details() or "")


async def test_foreign_instances_are_not_found_but_system_sees_all(
    plane: ControlPlane, node: FakeNode, meta: Any
) -> None:
    """Another namespace's instance looks missing; the system namespace sees it."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        team = await make_api(channel)
        inst = await team.Create(create_request(), metadata=TEAM)
    await set_key(meta, "instance", inst.uuid, "k", 1, TEAM)
    for call in (
        get_all(meta, "instance", inst.uuid, OTHER),
        set_key(meta, "instance", inst.uuid, "k", 2, OTHER),
        get_all(meta, "instance", "vm1", OTHER),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await call
        assert info.value.code() == grpc.StatusCode.NOT_FOUND
    assert await get_all(meta, "instance", inst.uuid, SYSTEM) == {"k": 1}


async def test_concurrent_sets_keep_every_key(api: Api, node: FakeNode, meta: Any) -> None:
    """Many sets racing on one instance all land (compare-and-set, retried)."""
    await api.Create(create_request())
    await asyncio.gather(*(set_key(meta, "instance", "vm1", f"k{i}", i) for i in range(30)))
    assert await get_all(meta, "instance", "vm1") == {f"k{i}": i for i in range(30)}


async def test_blob_and_artifact_metadata(plane: ControlPlane, meta: Any) -> None:
    """Blobs (by UUID) and artifacts (by UUID or TYPE:NAME) keep metadata too."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        blobs = await authed(blobs_pb2_grpc.BlobServiceStub, channel)
        artifacts = await authed(artifacts_pb2_grpc.ArtifactServiceStub, channel)

        async def chunks() -> AsyncIterator[blobs_pb2.BlobChunk]:
            yield blobs_pb2.BlobChunk(data=b"bytes")

        blob = await blobs.Upload(chunks(), metadata=TEAM)
        art = await artifacts.FromBlob(
            artifacts_pb2.FromBlobRequest(name="img", blob_uuid=blob.uuid), metadata=TEAM
        )
    assert await set_key(meta, "blob", blob.uuid, "source", "camera", TEAM) == {"source": "camera"}
    assert await get_all(meta, "blob", blob.uuid, OTHER) == {"source": "camera"}
    await set_key(meta, "artifact", "upload:img", "tags", "not checked here", TEAM)
    assert await get_all(meta, "artifact", art.uuid, TEAM) == {"tags": "not checked here"}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_all(meta, "artifact", art.uuid, OTHER)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_all(meta, "blob", "not-a-uuid", TEAM)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
    # Later artifact versions keep the metadata.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        artifacts = await authed(artifacts_pb2_grpc.ArtifactServiceStub, channel)
        await artifacts.FromBlob(
            artifacts_pb2.FromBlobRequest(name="img", blob_uuid=blob.uuid), metadata=TEAM
        )
    assert await get_all(meta, "artifact", art.uuid, TEAM) == {"tags": "not checked here"}


async def test_namespace_metadata_is_kept_and_private(meta: Any) -> None:
    """A namespace keeps metadata too; system may set it, others cannot see it."""
    assert await set_key(meta, "namespace", "team", "owner", "ops") == {"owner": "ops"}
    assert await get_all(meta, "namespace", "team", TEAM) == {"owner": "ops"}
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await get_all(meta, "namespace", "team", OTHER)
    assert info.value.code() == grpc.StatusCode.NOT_FOUND
