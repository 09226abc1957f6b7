"""Namespace trust (NamespaceService.Trust/Untrust): a namespace that trusts another lets it
see its artifacts and use them as disk bases; nothing else changes hands."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import pytest

from controlplane.app import ControlPlane
from protos import (
    artifacts_pb2,
    artifacts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
)
from tests.component.conftest import Api, Authed, FakeNode, authed, bearer, create_request


@dataclass
class Team:
    """One namespace's stubs."""

    api: Api
    artifacts: Any
    namespaces: Any


@dataclass
class World:
    admin: Any
    maker: Team
    user: Team
    blob: str


async def team(channel: grpc.aio.Channel, name: str) -> Team:
    token = await bearer(channel, name, f"{name}-key")
    return Team(
        Api(channel, token),
        Authed(artifacts_pb2_grpc.ArtifactServiceStub(channel), token),
        Authed(auth_pb2_grpc.NamespaceServiceStub(channel), token),
    )


@pytest.fixture
async def world(plane: ControlPlane) -> AsyncIterator[World]:
    """Namespaces maker (with an upload "base" and a label "golden") and user."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        admin = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
        for name in ("maker", "user"):
            await admin.Create(
                auth_pb2.CreateNamespaceRequest(name=name, key_name="k", key=f"{name}-key")
            )
        maker, user = await team(channel, "maker"), await team(channel, "user")
        blobs = Authed(blobs_pb2_grpc.BlobServiceStub(channel), maker.api.metadata)

        async def chunks() -> AsyncIterator[blobs_pb2.BlobChunk]:
            yield blobs_pb2.BlobChunk(data=b"maker's image")

        blob = await blobs.Upload(chunks())
        for kind, name in (("upload", "base"), ("label", "golden")):
            await maker.artifacts.FromBlob(
                artifacts_pb2.FromBlobRequest(name=name, blob_uuid=blob.uuid, type=kind)
            )
        yield World(admin, maker, user, blob.uuid)


def ref(value: str) -> artifacts_pb2.ArtifactRef:
    return artifacts_pb2.ArtifactRef(ref=value)


async def code_of(call: Any) -> grpc.StatusCode:
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def test_a_trusted_namespace_sees_and_boots_from_the_trusters_artifacts(
    world: World, node: FakeNode
) -> None:
    """After maker trusts user, user lists maker's artifacts and creates from them."""
    user, maker = world.user, world.maker
    base = {"size_gb": 1, "base": "sf://upload/maker/base"}
    assert await code_of(user.api.Create(create_request(disks=[base]))) == (
        grpc.StatusCode.NOT_FOUND
    )
    trusted = await maker.namespaces.Trust(auth_pb2.TrustRequest(namespace="maker", trusted="user"))
    assert list(trusted.trusted) == ["user"]
    listed = await user.artifacts.ListArtifacts(artifacts_pb2.ListArtifactsRequest())
    assert sorted((a.namespace, a.name) for a in listed.artifacts) == [
        ("maker", "base"),
        ("maker", "golden"),
    ]
    assert (await user.artifacts.GetArtifact(ref("upload:base"))).namespace == "maker"
    for i, disk in enumerate((base, {"size_gb": 1, "base": "label:golden"})):
        inst = await user.api.Create(create_request(f"vm{i}", disks=[disk]))
        assert inst.namespace == "user" and inst.spec.disks[0].base == f"sf://blob/{world.blob}"
        await user.api.wait_for(inst.uuid, lambda i: i.state == "created")


async def test_untrusting_hides_them_again(world: World) -> None:
    """Untrust takes the artifacts out of sight; instances already made keep their disks."""
    await world.maker.namespaces.Trust(auth_pb2.TrustRequest(namespace="maker", trusted="user"))
    art = await world.user.artifacts.GetArtifact(ref("upload:base"))
    untrusted = await world.maker.namespaces.Untrust(
        auth_pb2.TrustRequest(namespace="maker", trusted="user")
    )
    assert list(untrusted.trusted) == []
    for value in (art.uuid, "upload:base", "label:golden"):
        code = await code_of(world.user.artifacts.GetArtifact(ref(value)))
        assert code == grpc.StatusCode.NOT_FOUND


async def test_trust_goes_one_way_and_only_the_namespace_or_system_sets_it(
    world: World,
) -> None:
    """user may not make maker trust it, nor see maker's trust; trust is not mutual."""
    request = auth_pb2.TrustRequest(namespace="maker", trusted="user")
    assert await code_of(world.user.namespaces.Trust(request)) == grpc.StatusCode.NOT_FOUND
    await world.admin.Trust(request)
    mine = await world.user.artifacts.ListArtifacts(artifacts_pb2.ListArtifactsRequest())
    assert len(mine.artifacts) == 2
    theirs = await world.maker.namespaces.Get(auth_pb2.NamespaceRef(name="maker"))
    assert list(theirs.trusted) == ["user"]
    user_ns = await world.user.namespaces.Get(auth_pb2.NamespaceRef(name="user"))
    assert list(user_ns.trusted) == []


async def test_trusting_a_missing_namespace_is_refused_and_oneself_changes_nothing(
    world: World,
) -> None:
    """An unknown namespace is NOT_FOUND, none named INVALID_ARGUMENT; oneself: no change."""
    for trusted, code in (
        ("nobody", grpc.StatusCode.NOT_FOUND),
        ("", grpc.StatusCode.INVALID_ARGUMENT),
        ("maker", grpc.StatusCode.OK),
    ):
        request = auth_pb2.TrustRequest(namespace="maker", trusted=trusted)
        assert await code_of(world.maker.namespaces.Trust(request)) == code


async def test_a_deleted_namespace_is_no_longer_trusted(world: World, plane: ControlPlane) -> None:
    """Deleting a trusted namespace removes it from every trust list: a new one of that
    name sees nothing."""
    await world.admin.Trust(auth_pb2.TrustRequest(namespace="maker", trusted="user"))
    await world.admin.Delete(auth_pb2.NamespaceRef(name="user"))
    maker = await world.admin.Get(auth_pb2.NamespaceRef(name="maker"))
    assert list(maker.trusted) == []
    await world.admin.Create(
        auth_pb2.CreateNamespaceRequest(name="user", key_name="k", key="user-key")
    )
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        reborn = await team(channel, "user")
        listed = await reborn.artifacts.ListArtifacts(artifacts_pb2.ListArtifactsRequest())
        assert list(listed.artifacts) == []


async def test_two_trusters_with_the_same_name_need_a_full_reference(world: World) -> None:
    """label:NAME held by two namespaces trusting the caller is ambiguous: INVALID_ARGUMENT."""
    await world.admin.Create(
        auth_pb2.CreateNamespaceRequest(name="other", key_name="k", key="other-key")
    )
    system_artifacts = Authed(world.maker.artifacts.stub, world.admin.metadata)
    await system_artifacts.FromBlob(
        artifacts_pb2.FromBlobRequest(name="golden", blob_uuid=world.blob, type="label"),
        metadata=(("x-namespace", "other"),),
    )
    for owner in ("maker", "other"):
        await world.admin.Trust(auth_pb2.TrustRequest(namespace=owner, trusted="user"))
    code = await code_of(world.user.artifacts.GetArtifact(ref("label:golden")))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert (await world.user.artifacts.GetArtifact(ref("upload:base"))).namespace == "maker"


async def test_trusting_twice_or_untrusting_a_stranger_changes_nothing(world: World) -> None:
    """Trust is a set: trusting twice lists the namespace once; untrusting others is a no-op."""
    request = auth_pb2.TrustRequest(namespace="maker", trusted="user")
    await world.maker.namespaces.Trust(request)
    again = await world.maker.namespaces.Trust(request)
    assert list(again.trusted) == ["user"]
    other = auth_pb2.TrustRequest(namespace="maker", trusted="nobody")
    assert list((await world.maker.namespaces.Untrust(other)).trusted) == ["user"]
