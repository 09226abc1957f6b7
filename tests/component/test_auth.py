"""Authentication and namespaces over gRPC: tokens, keys, isolation, administrator rights."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from client.api import Client
from common.accesstoken import SKEW
from controlplane.app import ControlPlane, start
from protos import (
    auth_pb2,
    auth_pb2_grpc,
    instances_pb2,
    instances_pb2_grpc,
    node_pb2,
    node_pb2_grpc,
)
from tests.component.conftest import (
    SYSTEM_KEY,
    Api,
    FakeNode,
    authed,
    bearer,
    create_request,
    namespace_api,
    plane_settings,
)

Ref = instances_pb2.InstanceRef


async def code_of(call: Any) -> grpc.StatusCode:
    """The status code a call ends with."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


@pytest.fixture
async def channel(plane: ControlPlane) -> Any:
    """A plain channel to the plane."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
        yield ch


async def test_calls_without_a_valid_token_are_unauthenticated(channel: Any) -> None:
    """No token, a garbled one, or a forged signature: UNAUTHENTICATED before anything runs."""
    stub = instances_pb2_grpc.InstanceServiceStub(channel)
    request = instances_pb2.ListInstancesRequest()
    good = (await bearer(channel))[0][1]
    body = good.removeprefix("Bearer ").rsplit(".", 1)[0]
    for metadata in (
        (),
        (("authorization", "Bearer nonsense"),),
        (("authorization", good.replace("Bearer", "Basic")),),
        (("authorization", f"Bearer {body}.AAAA"),),
        (("authorization", f"Bearer {body}."),),
    ):
        assert await code_of(stub.List(request, metadata=metadata)) == (
            grpc.StatusCode.UNAUTHENTICATED
        )
    assert await code_of(stub.List(request, metadata=await bearer(channel))) == grpc.StatusCode.OK


async def test_a_wrong_key_or_unknown_namespace_gets_no_token(channel: Any) -> None:
    """A wrong key is UNAUTHENTICATED; an unknown namespace NOT_FOUND; empty fields INVALID."""
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    cases = [
        (auth_pb2.TokenRequest(namespace="system", key="wrong"), grpc.StatusCode.UNAUTHENTICATED),
        (auth_pb2.TokenRequest(namespace="nope", key=SYSTEM_KEY), grpc.StatusCode.NOT_FOUND),
        (auth_pb2.TokenRequest(namespace="", key="x"), grpc.StatusCode.INVALID_ARGUMENT),
        (auth_pb2.TokenRequest(namespace="system", key=""), grpc.StatusCode.INVALID_ARGUMENT),
    ]
    for request, code in cases:
        assert await code_of(auth.Token(request)) == code
    reply = await auth.Token(auth_pb2.TokenRequest(namespace="system", key=SYSTEM_KEY))
    assert reply.token_type == "Bearer" and reply.expires_in == 900


async def test_health_and_reflection_need_no_token(channel: Any) -> None:
    """Health checking stays public so load balancers and grpcurl work."""
    health = health_pb2_grpc.HealthStub(channel)
    reply = await health.Check(health_pb2.HealthCheckRequest(service=""))
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_expired_tokens_are_refused(tmp_path: Path) -> None:
    """A token stops working once its lifetime has passed on the control plane's clock."""
    now = [1000.0]
    plane = await start(plane_settings(tmp_path / "cp"), clock=lambda: now[0])
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
            stub = instances_pb2_grpc.InstanceServiceStub(ch)
            metadata = await bearer(ch)
            request = instances_pb2.ListInstancesRequest()
            assert await code_of(stub.List(request, metadata=metadata)) == grpc.StatusCode.OK
            now[0] += 900 + SKEW
            assert await code_of(stub.List(request, metadata=metadata)) == (
                grpc.StatusCode.UNAUTHENTICATED
            )
    finally:
        await plane.stop(0)


async def test_client_refreshes_an_expired_token_transparently(tmp_path: Path) -> None:
    """The Python client re-authenticates once when told its token is no longer good."""
    now = [1000.0]
    plane = await start(plane_settings(tmp_path / "cp"), clock=lambda: now[0])
    try:

        def use() -> int:
            with Client(
                f"127.0.0.1:{plane.port}", "system", SYSTEM_KEY, timeout=10, plaintext=True
            ) as client:
                first = client.token()
                client.list_instances()
                # The control plane's clock: the client still thinks it is fresh.
                now[0] += 900 + SKEW
                client.list_instances()
                assert client.token() != first
                return len(client.list_namespaces())

        assert await asyncio.to_thread(use) == 1
    finally:
        await plane.stop(0)


async def test_deleting_or_replacing_a_key_revokes_its_tokens(channel: Any) -> None:
    """Tokens minted with a key die with it; other keys keep working."""
    namespaces = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
    await namespaces.Create(auth_pb2.CreateNamespaceRequest(name="team", key_name="a", key="ka"))
    await namespaces.AddKey(auth_pb2.AddKeyRequest(namespace="team", key_name="b", key="kb"))
    stub = instances_pb2_grpc.InstanceServiceStub(channel)
    request = instances_pb2.ListInstancesRequest()
    with_a = await bearer(channel, "team", "ka")
    with_b = await bearer(channel, "team", "kb")
    await namespaces.DeleteKey(auth_pb2.DeleteKeyRequest(namespace="team", key_name="a"))
    assert await code_of(stub.List(request, metadata=with_a)) == grpc.StatusCode.UNAUTHENTICATED
    assert await code_of(stub.List(request, metadata=with_b)) == grpc.StatusCode.OK
    await namespaces.AddKey(auth_pb2.AddKeyRequest(namespace="team", key_name="b", key="kb2"))
    assert await code_of(stub.List(request, metadata=with_b)) == grpc.StatusCode.UNAUTHENTICATED
    auth = auth_pb2_grpc.AuthServiceStub(channel)
    assert await code_of(auth.Token(auth_pb2.TokenRequest(namespace="team", key="kb"))) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_keys_are_stored_hashed(plane: ControlPlane, channel: Any) -> None:
    """No stored byte holds a key in the clear."""
    namespaces = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
    secret = "a-very-recognisable-key-1234"
    ns = await namespaces.Create(
        auth_pb2.CreateNamespaceRequest(name="hashed", key_name="k", key=secret)
    )
    assert list(ns.keys) == ["k"]
    items = await plane.store.scan(b"")
    assert items and not any(secret.encode() in item.value for item in items)
    assert not any(SYSTEM_KEY.encode() in item.value for item in items)


async def test_only_system_administers_namespaces(channel: Any) -> None:
    """Other namespaces cannot create or delete namespaces, see them, or open node streams."""
    await namespace_api(channel, "tenant")
    tenant = await bearer(channel, "tenant", "tenant-key")
    namespaces = auth_pb2_grpc.NamespaceServiceStub(channel)
    create = namespaces.Create(auth_pb2.CreateNamespaceRequest(name="x"), metadata=tenant)
    assert await code_of(create) == grpc.StatusCode.PERMISSION_DENIED
    delete = namespaces.Delete(auth_pb2.NamespaceRef(name="tenant"), metadata=tenant)
    assert await code_of(delete) == grpc.StatusCode.PERMISSION_DENIED
    get = namespaces.Get(auth_pb2.NamespaceRef(name="system"), metadata=tenant)
    assert await code_of(get) == grpc.StatusCode.NOT_FOUND
    listed = await namespaces.List(auth_pb2.ListNamespacesRequest(), metadata=tenant)
    assert [n.name for n in listed.namespaces] == ["tenant"]
    own_key = auth_pb2.AddKeyRequest(namespace="tenant", key_name="second", key="k2")
    assert (await namespaces.AddKey(own_key, metadata=tenant)).keys == ["k", "second"]
    call = node_pb2_grpc.NodeServiceStub(channel).Connect(metadata=tenant)
    await call.write(node_pb2.NodeMessage(register=node_pb2.Register(name="rogue")))
    assert await code_of(call.read()) == grpc.StatusCode.PERMISSION_DENIED


async def test_system_acts_in_another_namespace_others_cannot(
    api: Api, node: FakeNode, channel: Any
) -> None:
    """x-namespace lets system create in a tenant's namespace; a tenant's x-namespace is ignored."""
    tenant = await namespace_api(channel, "tenant")
    as_tenant = Api(channel, (*api.metadata, ("x-namespace", "tenant")))
    made = await as_tenant.Create(create_request("for-tenant"))
    assert made.namespace == "tenant"
    assert (await tenant.Get(Ref(ref="for-tenant"))).uuid == made.uuid
    sneaky = Api(channel, (*tenant.metadata, ("x-namespace", "system")))
    assert (await sneaky.Create(create_request("mine"))).namespace == "tenant"
    nowhere = Api(channel, (*api.metadata, ("x-namespace", "missing")))
    assert await code_of(nowhere.List(instances_pb2.ListInstancesRequest())) == (
        grpc.StatusCode.NOT_FOUND
    )


async def test_namespaces_with_instances_cannot_be_deleted(
    api: Api, node: FakeNode, channel: Any
) -> None:
    """Deleting a namespace is refused while it holds instances; then its keys stop working."""
    tenant = await namespace_api(channel, "doomed")
    inst = await tenant.Create(create_request("vm"))
    namespaces = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
    assert await code_of(namespaces.Delete(auth_pb2.NamespaceRef(name="doomed"))) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    assert await code_of(namespaces.Delete(auth_pb2.NamespaceRef(name="system"))) == (
        grpc.StatusCode.FAILED_PRECONDITION
    )
    await tenant.Delete(Ref(ref=inst.uuid))
    await api.wait_for(inst.uuid, lambda i: i.state == "deleted")
    gone = await namespaces.Delete(auth_pb2.NamespaceRef(name="doomed"))
    assert gone.state == "deleted"
    assert await code_of(tenant.List(instances_pb2.ListInstancesRequest())) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


async def test_bad_namespace_and_key_names_are_refused(channel: Any) -> None:
    """Names are checked; duplicates are refused."""
    namespaces = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
    for request in (
        auth_pb2.CreateNamespaceRequest(name=""),
        auth_pb2.CreateNamespaceRequest(name="has space"),
        auth_pb2.CreateNamespaceRequest(name="x" * 64),
        auth_pb2.CreateNamespaceRequest(name="ok", key_name="k"),
    ):
        assert await code_of(namespaces.Create(request)) == grpc.StatusCode.INVALID_ARGUMENT
    await namespaces.Create(auth_pb2.CreateNamespaceRequest(name="dup"))
    assert await code_of(namespaces.Create(auth_pb2.CreateNamespaceRequest(name="dup"))) == (
        grpc.StatusCode.ALREADY_EXISTS
    )
    bad_key = auth_pb2.AddKeyRequest(namespace="dup", key_name="_service_key", key="k")
    assert await code_of(namespaces.AddKey(bad_key)) == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_generated_system_key_is_written_for_the_operator(tmp_path: Path) -> None:
    """Without a configured key, the first start writes one (mode 0600) that works."""
    plane = await start(replace(plane_settings(tmp_path / "cp"), system_key=""))
    try:
        key_file = tmp_path / "cp" / "system-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        key = key_file.read_text().strip()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
            await bearer(ch, "system", key)
    finally:
        await plane.stop(0)
