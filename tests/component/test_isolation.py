"""Isolation: every RPC that takes an object, called by another namespace, finds nothing.

One namespace ("owner") makes one object of every kind; another ("stranger")
names each of them in every RPC that takes an object, and gets NOT_FOUND,
exactly as for an object that does not exist. Blobs belong to no namespace
(they are content-addressed and named by an unguessable UUID): every namespace
that knows a blob's UUID may read it and its metadata, and annotate it. The
table must classify every method of every public service, so a new RPC cannot
escape the test.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from controlplane.app import ControlPlane
from protos import (
    agent_pb2,
    agent_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    common_pb2,
    consoles_pb2,
    consoles_pb2_grpc,
    instances_pb2,
    instances_pb2_grpc,
    metadata_pb2,
    metadata_pb2_grpc,
    networks_pb2,
    networks_pb2_grpc,
    nodes_pb2,
    uploads_pb2,
    uploads_pb2_grpc,
)
from tests.component.conftest import (
    Authed,
    FakeNode,
    authed,
    bearer,
    create_request,
)

STUBS: dict[str, Any] = {
    "minicloud.v1.AgentService": agent_pb2_grpc.AgentServiceStub,
    "minicloud.v1.ArtifactService": artifacts_pb2_grpc.ArtifactServiceStub,
    "minicloud.v1.BlobService": blobs_pb2_grpc.BlobServiceStub,
    "minicloud.v1.ConsoleService": consoles_pb2_grpc.ConsoleServiceStub,
    "minicloud.v1.InstanceService": instances_pb2_grpc.InstanceServiceStub,
    "minicloud.v1.MetadataService": metadata_pb2_grpc.MetadataServiceStub,
    "minicloud.v1.NetworkService": networks_pb2_grpc.NetworkServiceStub,
    "minicloud.v1.InterfaceService": networks_pb2_grpc.InterfaceServiceStub,
    "minicloud.v1.UploadService": uploads_pb2_grpc.UploadServiceStub,
    "minicloud.v1.NamespaceService": auth_pb2_grpc.NamespaceServiceStub,
}
FILES = (
    agent_pb2,
    artifacts_pb2,
    blobs_pb2,
    consoles_pb2,
    instances_pb2,
    metadata_pb2,
    networks_pb2,
    uploads_pb2,
    auth_pb2,
    nodes_pb2,
)

# Methods that name no object of another namespace, and why.
NO_OBJECT: dict[str, str] = {
    "InstanceService/Create": "makes a new object (placed_on: system only, test_placed_on)",
    "InstanceService/List": "lists the caller's own",
    "InstanceService/Move": "system only (PERMISSION_DENIED), tested in test_moves",
    "InstanceService/ListStream": "lists the caller's own (paging tested in test_list_paging)",
    "NetworkService/Create": "makes a new object",
    "NetworkService/List": "lists the caller's own",
    "ArtifactService/Upload": "makes a new version of the caller's own artifact",
    "ArtifactService/CacheUrl": "makes a new version of the caller's own artifact",
    "ArtifactService/ListArtifacts": "lists the caller's own",
    "ArtifactService/DeleteAllArtifacts": "deletes the caller's own",
    "BlobService/ListBlobs": "lists the caller's own (test_artifacts.py tests it)",
    "BlobService/Upload": "makes a new blob",
    "BlobService/SearchBlobs": "blobs belong to no namespace",
    "UploadService/Create": "makes a new upload",
    "NamespaceService/Create": "system only (PERMISSION_DENIED), tested in test_auth",
    "NamespaceService/List": "lists the caller's own",
    **{
        f"NodeAdminService/{m}": "system only (PERMISSION_DENIED), tested in test_nodes"
        for m in (
            "ListNodes",
            "GetNode",
            "DisableNode",
            "EnableNode",
            "DrainNode",
            "DeleteNode",
            "GetNodeEvents",
        )
    },
    **{
        f"NodeAdminService/{m}": "system only (PERMISSION_DENIED), tested in test_node_tls"
        for m in ("RevokeCertificate", "ListRevocations")
    },
}


@dataclass(frozen=True)
class Objects:
    """The owner's objects, one of each kind."""

    instance: str
    network: str
    interface: str
    operation: str
    artifact: str
    upload: str
    blob: str


Request = Callable[[Objects], Any]


def meta(kind: str, ref: Callable[[Objects], str]) -> dict[str, Request]:
    """The three metadata calls on one object type."""
    value = struct_pb2.Value(string_value="x")
    return {
        f"Get {kind}": lambda o: metadata_pb2.MetadataRef(object_type=kind, ref=ref(o)),
        f"Set {kind}": lambda o: metadata_pb2.SetMetadataRequest(
            object_type=kind, ref=ref(o), key="k", value=value
        ),
        f"Delete {kind}": lambda o: metadata_pb2.DeleteMetadataRequest(
            object_type=kind, ref=ref(o), key="k"
        ),
    }


def inst(o: Objects) -> instances_pb2.InstanceRef:
    return instances_pb2.InstanceRef(ref=o.instance)


# "Service/Method[ variant]" -> the request naming the owner's object.
HIDDEN: dict[str, Request] = {
    "AgentService/Execute": lambda o: agent_pb2.ExecuteRequest(ref=o.instance, command_line="id"),
    "AgentService/ExecuteStream": lambda o: agent_pb2.ExecuteRequest(
        ref=o.instance, command_line="id"
    ),
    "AgentService/Put": lambda o: agent_pb2.PutRequest(ref=o.instance, blob_uuid=o.blob, path="/x"),
    "AgentService/Get": lambda o: agent_pb2.GetRequest(ref=o.instance, path="/etc/hostname"),
    "AgentService/GetAgentOperation": lambda o: agent_pb2.OperationRef(uuid=o.operation),
    "AgentService/ListAgentOperations": lambda o: agent_pb2.ListAgentOperationsRequest(
        ref=o.instance, all=True
    ),
    "AgentService/DeleteAgentOperation": lambda o: agent_pb2.OperationRef(uuid=o.operation),
    "ArtifactService/GetArtifact": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "ArtifactService/FromBlob": lambda o: artifacts_pb2.FromBlobRequest(
        name="lbl", blob_uuid=o.blob, type="label"
    ),
    "ArtifactService/DeleteArtifact": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "ArtifactService/ListVersions": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "ArtifactService/DeleteVersion": lambda o: artifacts_pb2.DeleteVersionRequest(
        ref=o.artifact, index=1
    ),
    "ArtifactService/SetMaxVersions": lambda o: artifacts_pb2.SetMaxVersionsRequest(
        ref=o.artifact, max_versions=1
    ),
    "ArtifactService/GetEvents": lambda o: instances_pb2.GetEventsRequest(ref=o.artifact),
    "ArtifactService/Share": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "ArtifactService/Unshare": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "ConsoleService/GetConsoleData": lambda o: consoles_pb2.ConsoleDataRequest(ref=o.instance),
    "ConsoleService/ClearConsoleData": inst,
    "ConsoleService/Screenshot": inst,
    "ConsoleService/VdiConsoleHelper": inst,
    "ConsoleService/Attach": lambda o: consoles_pb2.ConsoleInput(ref=o.instance),
    "InstanceService/Get": inst,
    "InstanceService/Delete": inst,
    "InstanceService/SoftReboot": inst,
    "InstanceService/HardReboot": inst,
    "InstanceService/PowerOn": inst,
    "InstanceService/PowerOff": inst,
    "InstanceService/Pause": inst,
    "InstanceService/Unpause": inst,
    "InstanceService/GetEvents": lambda o: instances_pb2.GetEventsRequest(ref=o.instance),
    "InstanceService/Watch": lambda o: instances_pb2.WatchRequest(ref=o.instance),
    "InstanceService/Snapshot": lambda o: instances_pb2.SnapshotInstanceRequest(ref=o.instance),
    "InstanceService/ListSnapshots": inst,
    "NetworkService/Get": lambda o: networks_pb2.NetworkRef(ref=o.network),
    "NetworkService/Delete": lambda o: networks_pb2.DeleteNetworkRequest(ref=o.network),
    "NetworkService/ListAddresses": lambda o: networks_pb2.NetworkRef(ref=o.network),
    "NetworkService/ListInterfaces": lambda o: networks_pb2.NetworkRef(ref=o.network),
    "NetworkService/GetEvents": lambda o: instances_pb2.GetEventsRequest(ref=o.network),
    "InterfaceService/Get": lambda o: networks_pb2.InterfaceRef(uuid=o.interface),
    "InterfaceService/ListForInstance": inst,
    "InterfaceService/Attach": lambda o: networks_pb2.AttachInterfaceRequest(
        instance=o.instance, network=common_pb2.NetworkSpec(network_uuid=o.network)
    ),
    "InterfaceService/Float": lambda o: networks_pb2.InterfaceRef(uuid=o.interface),
    "InterfaceService/Defloat": lambda o: networks_pb2.InterfaceRef(uuid=o.interface),
    "UploadService/Get": lambda o: uploads_pb2.UploadRef(uuid=o.upload),
    "UploadService/Append": lambda o: uploads_pb2.AppendRequest(uuid=o.upload, data=b"x"),
    "UploadService/Truncate": lambda o: uploads_pb2.TruncateRequest(uuid=o.upload, size=0),
    "UploadService/ToArtifact": lambda o: uploads_pb2.ToArtifactRequest(
        upload_uuid=o.upload, name="stolen"
    ),
    "NamespaceService/Get": lambda o: auth_pb2.NamespaceRef(name="owner"),
    "NamespaceService/Delete": lambda o: auth_pb2.NamespaceRef(name="owner"),
    "NamespaceService/AddKey": lambda o: auth_pb2.AddKeyRequest(
        namespace="owner", key_name="mine", key="k" * 12
    ),
    "NamespaceService/DeleteKey": lambda o: auth_pb2.DeleteKeyRequest(
        namespace="owner", key_name="k"
    ),
    "NamespaceService/Trust": lambda o: auth_pb2.TrustRequest(
        namespace="owner", trusted="stranger"
    ),
    "NamespaceService/Untrust": lambda o: auth_pb2.TrustRequest(
        namespace="owner", trusted="friend"
    ),
    **{f"MetadataService/{k}": v for k, v in meta("instance", lambda o: o.instance).items()},
    **{f"MetadataService/{k}": v for k, v in meta("network", lambda o: o.network).items()},
    **{f"MetadataService/{k}": v for k, v in meta("interface", lambda o: o.interface).items()},
    **{f"MetadataService/{k}": v for k, v in meta("artifact", lambda o: o.artifact).items()},
    **{f"MetadataService/{k}": v for k, v in meta("namespace", lambda o: "owner").items()},
}
# What a stranger may do with a blob: read it (blobs belong to no namespace).
SHARED: dict[str, Request] = {
    "BlobService/GetBlob": lambda o: blobs_pb2.BlobRef(uuid=o.blob),
    "BlobService/Download": lambda o: blobs_pb2.DownloadRequest(uuid=o.blob),
    "BlobService/GetEvents": lambda o: instances_pb2.GetEventsRequest(ref=o.blob),
    "MetadataService/Get blob": lambda o: metadata_pb2.MetadataRef(object_type="blob", ref=o.blob),
}
# Blob metadata: a blob's UUID lets any namespace annotate it, as it lets it read it.
BLOB_WRITES: dict[str, Request] = {
    "MetadataService/Set blob": lambda o: metadata_pb2.SetMetadataRequest(
        object_type="blob", ref=o.blob, key="k", value=struct_pb2.Value(string_value="x")
    ),
    "MetadataService/Delete blob": lambda o: metadata_pb2.DeleteMetadataRequest(
        object_type="blob", ref=o.blob, key="k"
    ),
}


# What a namespace the owner trusts ("friend") may do with the owner's artifact: see it and
# use it (TRUSTED_READS answer OK), never change it (TRUSTED_WRITES answer PERMISSION_DENIED).
TRUSTED_READS: dict[str, Request] = {
    "ArtifactService/GetArtifact": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "ArtifactService/GetArtifact by name": lambda o: artifacts_pb2.ArtifactRef(ref="label:lbl"),
    "ArtifactService/ListVersions": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "ArtifactService/GetEvents": lambda o: instances_pb2.GetEventsRequest(ref=o.artifact),
    "MetadataService/Get artifact": lambda o: metadata_pb2.MetadataRef(
        object_type="artifact", ref=o.artifact
    ),
}
TRUSTED_WRITES: dict[str, Request] = {
    "ArtifactService/DeleteArtifact": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "ArtifactService/DeleteVersion": lambda o: artifacts_pb2.DeleteVersionRequest(
        ref=o.artifact, index=1
    ),
    "ArtifactService/SetMaxVersions": lambda o: artifacts_pb2.SetMaxVersionsRequest(
        ref=o.artifact, max_versions=1
    ),
    "ArtifactService/Share": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "ArtifactService/Unshare": lambda o: artifacts_pb2.ArtifactRef(ref=o.artifact),
    "MetadataService/Set artifact": lambda o: metadata_pb2.SetMetadataRequest(
        object_type="artifact", ref=o.artifact, key="k", value=struct_pb2.Value(string_value="x")
    ),
    "MetadataService/Delete artifact": lambda o: metadata_pb2.DeleteMetadataRequest(
        object_type="artifact", ref=o.artifact, key="k"
    ),
}


def method_names() -> set[str]:
    """Every method of every public service, as "Service/Method"."""
    names = set()
    for module in FILES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                names.add(f"{service.name}/{method.name}")
    names.discard("AuthService/Token")
    return names


def test_every_method_is_classified() -> None:
    """Each public method is in the table of hidden objects, shared ones, or takes none."""
    covered = {k.split(" ")[0] for k in (*HIDDEN, *SHARED, *BLOB_WRITES)} | set(NO_OBJECT)
    assert method_names() - covered == set()
    assert covered - method_names() == set()


@pytest.fixture
async def world(plane: ControlPlane, node: FakeNode) -> AsyncIterator[tuple[Any, Objects]]:
    """The owner's objects, and a channel with the stranger's token (the owner trusts
    "friend", not the stranger)."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        admin = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
        for name in ("owner", "stranger", "friend"):
            await admin.Create(
                auth_pb2.CreateNamespaceRequest(name=name, key_name="k", key=f"{name}-key")
            )
        await admin.Trust(auth_pb2.TrustRequest(namespace="owner", trusted="friend"))
        owner = await bearer(channel, "owner", "owner-key")
        stranger = await bearer(channel, "stranger", "stranger-key")

        def as_owner(stub: Any) -> Authed:
            return Authed(stub(channel), owner)

        nets = as_owner(networks_pb2_grpc.NetworkServiceStub)
        net = await nets.Create(
            networks_pb2.CreateNetworkRequest(name="net", netblock="10.9.0.0/24")
        )
        api = as_owner(instances_pb2_grpc.InstanceServiceStub)
        created = await api.Create(
            create_request(
                "private", side_channels=["sf-agent"], networks=[{"network_uuid": net.uuid}]
            )
        )
        for _ in range(200):
            got = await api.Get(instances_pb2.InstanceRef(ref=created.uuid))
            if got.state == "created":
                break
            await asyncio.sleep(0.05)
        ifaces = await as_owner(networks_pb2_grpc.InterfaceServiceStub).ListForInstance(
            instances_pb2.InstanceRef(ref=created.uuid)
        )
        op = await as_owner(agent_pb2_grpc.AgentServiceStub).Execute(
            agent_pb2.ExecuteRequest(ref=created.uuid, command_line="id")
        )

        async def chunks() -> AsyncIterator[blobs_pb2.BlobChunk]:
            yield blobs_pb2.BlobChunk(data=b"owner's bytes")

        blob = await as_owner(blobs_pb2_grpc.BlobServiceStub).Upload(chunks())
        art = await as_owner(artifacts_pb2_grpc.ArtifactServiceStub).FromBlob(
            artifacts_pb2.FromBlobRequest(name="lbl", blob_uuid=blob.uuid, type="label")
        )
        upload = await as_owner(uploads_pb2_grpc.UploadServiceStub).Create(
            uploads_pb2.CreateUploadRequest()
        )
        objects = Objects(
            instance=created.uuid,
            network=net.uuid,
            interface=ifaces.interfaces[0].uuid,
            operation=op.uuid,
            artifact=art.uuid,
            upload=upload.uuid,
            blob=blob.uuid,
        )
        yield (channel, stranger), objects


async def call(channel: grpc.aio.Channel, token: Any, name: str, request: Any) -> grpc.StatusCode:
    """Call "Service/Method[ variant]" with the request as the token's namespace."""
    service, method = name.split(" ")[0].split("/")
    stub = STUBS[f"minicloud.v1.{service}"](channel)
    rpc = getattr(stub, method)
    try:
        full = f"{service}/{method}"
        if full in ("AgentService/ExecuteStream", "InstanceService/Watch", "BlobService/Download"):
            async for _ in rpc(request, metadata=token, timeout=5):
                break
        elif full == "ConsoleService/Attach":

            async def inputs() -> AsyncIterator[Any]:
                yield request

            async for _ in rpc(inputs(), metadata=token, timeout=5):
                break
        else:
            await rpc(request, metadata=token, timeout=5)
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize("name", sorted(HIDDEN))
async def test_another_namespaces_object_is_not_found(
    world: tuple[tuple[grpc.aio.Channel, Any], Objects], name: str
) -> None:
    """The stranger naming the owner's object gets NOT_FOUND, as for a missing one."""
    (channel, stranger), objects = world
    code = await call(channel, stranger, name, HIDDEN[name](objects))
    if name.startswith("ArtifactService/FromBlob"):
        # A label in the stranger's own namespace over a blob anyone may read.
        assert code == grpc.StatusCode.OK
        return
    if name.startswith("NamespaceService/") or name.endswith(" namespace"):
        assert code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.PERMISSION_DENIED), code
        return
    assert code == grpc.StatusCode.NOT_FOUND, code


@pytest.mark.parametrize("name", sorted(SHARED))
async def test_blobs_are_readable_by_every_namespace(
    world: tuple[tuple[grpc.aio.Channel, Any], Objects], name: str
) -> None:
    """Blobs belong to no namespace: the stranger may read the owner's blob."""
    (channel, stranger), objects = world
    assert await call(channel, stranger, name, SHARED[name](objects)) == grpc.StatusCode.OK


@pytest.mark.parametrize("name", sorted(BLOB_WRITES))
async def test_a_blobs_uuid_lets_any_namespace_annotate_it(
    world: tuple[tuple[grpc.aio.Channel, Any], Objects], name: str
) -> None:
    """Blobs belong to no namespace: knowing the UUID lets one read and annotate it."""
    (channel, stranger), objects = world
    assert await call(channel, stranger, name, BLOB_WRITES[name](objects)) == grpc.StatusCode.OK


@pytest.mark.parametrize("name", sorted(TRUSTED_READS))
async def test_a_trusted_namespace_sees_the_trusters_artifacts(
    world: tuple[tuple[grpc.aio.Channel, Any], Objects], name: str
) -> None:
    """A namespace the owner trusts may read the owner's artifact (by UUID or TYPE:NAME)."""
    (channel, _), objects = world
    friend = await bearer(channel, "friend", "friend-key")
    assert await call(channel, friend, name, TRUSTED_READS[name](objects)) == grpc.StatusCode.OK


@pytest.mark.parametrize("name", sorted(TRUSTED_WRITES))
async def test_a_trusted_namespace_cannot_change_the_trusters_artifacts(
    world: tuple[tuple[grpc.aio.Channel, Any], Objects], name: str
) -> None:
    """Trust lets a namespace see and use artifacts, not change them."""
    (channel, _), objects = world
    friend = await bearer(channel, "friend", "friend-key")
    code = await call(channel, friend, name, TRUSTED_WRITES[name](objects))
    assert code == grpc.StatusCode.PERMISSION_DENIED, code
