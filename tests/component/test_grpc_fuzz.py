"""A fuzz of every unary method of the control plane's public gRPC services.

Requests are built from each method's input descriptor with random and hostile
field values (empty and huge strings, odd but valid Unicode, NUL, negative and
extreme numbers, enum values no enum names, malformed UUIDs and references,
and the references of real objects, so calls get past "not found"), sent with
a system token or an ordinary namespace's, now and then with an odd
``x-namespace``, with a fixed seed.
No call may end INTERNAL or UNKNOWN, nor with a status message too long for a
gRPC client to read, and the control plane must still serve afterwards.
"""

from __future__ import annotations

import random
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import grpc
from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message
from grpc_health.v1 import health_pb2, health_pb2_grpc

from controlplane.app import ControlPlane
from protos import (
    agent_pb2,
    artifacts_pb2,
    auth_pb2,
    auth_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    consoles_pb2,
    instances_pb2,
    instances_pb2_grpc,
    metadata_pb2,
    networks_pb2,
    networks_pb2_grpc,
    nodes_pb2,
    uploads_pb2,
    uploads_pb2_grpc,
)
from tests.component.conftest import FakeNode, authed, bearer, create_request

MODULES = (
    instances_pb2,
    agent_pb2,
    blobs_pb2,
    artifacts_pb2,
    uploads_pb2,
    auth_pb2,
    metadata_pb2,
    consoles_pb2,
    networks_pb2,
    nodes_pb2,
)
SEED = 20261204
CALLS_PER_METHOD = 150
BUDGET_SECONDS = 45.0
STRINGS = (
    "",
    "x" * 70000,
    "system",
    "vm1",
    "not-a-uuid",
    "00000000-0000-0000-0000-00000000000g",
    "6F1C1F5E-0D4E-4D8A-9A57-0C5E0C0B7F11",
    "6f1c1f5e-0d4e-4d8a-9a57-0c5e0c0b7f11",
    "\u202etxt.exe",
    "\U0001f600\u0301\ufeff",
    "名前",
    "a\x00b",
    "../../etc/passwd",
    "upload:x",
    "label:",
    "sf://blob/zz",
    "sf://upload/system/",
    "10.0.0.0/24",
    "10.0.0.1/33",
    "::1/128",
    "instance",
    "network",
    "interface",
    "artifact",
    "blob",
    "namespace",
    "tags",
    "affinity",
    " ",
    "\n",
)
INTS = (0, 1, -1, 2, 63, 64, 65, 1023, -(2**31), 2**31 - 1)
INT64S = (*INTS, -(2**63), 2**63 - 1, 2**40)
# Bytes no message parses from: a length-delimited field 1 cut short, a cut-off tag.
CUT_OFF = (b"\x0a\x10abc", b"\xff\xff\xff")
# x-namespace values besides none at all (printable ASCII: what grpc lets a client send).
NAMESPACES = ("", "system", "nosuch", "../system", "a" * 300, "Système".encode().hex(), " x ")


def value_for(rng: random.Random, field: Any, strings: Sequence[str]) -> Any:
    """A random, often hostile, value for one (non-repeated) field."""
    kind = field.type
    if kind == field.TYPE_STRING:
        return rng.choice(strings)
    if kind == field.TYPE_BYTES:
        return rng.choice((b"", b"\x00" * 10, bytes(range(256)), b"x" * 100000))
    if kind == field.TYPE_BOOL:
        return rng.random() < 0.5
    if kind in (field.TYPE_INT32, field.TYPE_SINT32, field.TYPE_SFIXED32):
        return rng.choice(INTS)
    if kind in (field.TYPE_INT64, field.TYPE_SINT64, field.TYPE_SFIXED64):
        return rng.choice(INT64S)
    if kind in (field.TYPE_UINT32, field.TYPE_FIXED32):
        return rng.choice((0, 1, 2**32 - 1))
    if kind in (field.TYPE_UINT64, field.TYPE_FIXED64):
        return rng.choice((0, 1, 2**64 - 1))
    if kind in (field.TYPE_DOUBLE, field.TYPE_FLOAT):
        return rng.choice((0.0, -1.0, 1e308, float("inf"), float("nan")))
    if kind == field.TYPE_ENUM:
        return rng.choice([*(v.number for v in field.enum_type.values), 999, -1])
    raise AssertionError(f"unexpected field type {kind}")


def fill(rng: random.Random, message: Message, strings: Sequence[str], depth: int = 0) -> None:
    """Set a random subset of message's fields to random values, recursively."""
    for field in message.DESCRIPTOR.fields:
        if rng.random() < 0.25:
            continue
        repeated = field.is_repeated
        if field.message_type is not None:
            if field.message_type.full_name in ("google.protobuf.Struct", "google.protobuf.Value"):
                holder = getattr(message, field.name)
                payload = rng.choice(({}, {"tags": "x"}, {"affinity": [1]}, {"": 1}, {"k": "v"}))
                if field.message_type.full_name == "google.protobuf.Struct":
                    holder.update(payload)
                else:
                    holder.string_value = rng.choice(strings)
                continue
            if field.message_type.GetOptions().map_entry:
                target = getattr(message, field.name)
                value_field = field.message_type.fields_by_name["value"]
                for _ in range(rng.randint(0, 2)):
                    key = rng.choice(strings)
                    if value_field.message_type is None:
                        target[key] = value_for(rng, value_field, strings)
                continue
            if depth >= 3:
                continue
            if repeated:
                for _ in range(rng.randint(0, 3)):
                    fill(rng, getattr(message, field.name).add(), strings, depth + 1)
            else:
                fill(rng, getattr(message, field.name), strings, depth + 1)
            continue
        if repeated:
            getattr(message, field.name).extend(
                value_for(rng, field, strings) for _ in range(rng.randint(0, 3))
            )
        else:
            setattr(message, field.name, value_for(rng, field, strings))


def unary_methods() -> list[tuple[str, pb_descriptor.MethodDescriptor]]:
    """(path, descriptor) of every unary method of the public services."""
    out = []
    for module in MODULES:
        for service in module.DESCRIPTOR.services_by_name.values():
            for method in service.methods:
                if not method.client_streaming and not method.server_streaming:
                    out.append((f"/{service.full_name}/{method.name}", method))
    return out


def harmless(method: pb_descriptor.MethodDescriptor, request: Message) -> None:
    """Keep the fuzz from revoking its own tokens (replacing or deleting their keys)."""
    if method.name in ("AddKey", "DeleteKey", "Delete") and method.containing_service.name == (
        "NamespaceService"
    ):
        for name in ("namespace", "name"):
            fields = request.DESCRIPTOR.fields_by_name
            if name in fields and getattr(request, name) in ("system", "fuzzuser"):
                setattr(request, name, "fuzz-ns")


async def real_objects(channel: grpc.aio.Channel) -> list[str]:
    """Make a network, an instance on it, a blob, an upload and a namespace with a key;
    their references."""
    namespaces = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
    await namespaces.Create(
        auth_pb2.CreateNamespaceRequest(name="fuzzuser", key_name="k", key="fuzzuser-key")
    )
    nets = await authed(networks_pb2_grpc.NetworkServiceStub, channel)
    net = await nets.Create(
        networks_pb2.CreateNetworkRequest(name="fuzznet", netblock="10.7.0.0/24")
    )
    api = await authed(instances_pb2_grpc.InstanceServiceStub, channel)
    inst = await api.Create(
        create_request("fuzzvm", side_channels=["sf-agent"], networks=[{"network_uuid": net.uuid}])
    )

    async def chunks() -> AsyncIterator[blobs_pb2.BlobChunk]:
        yield blobs_pb2.BlobChunk(data=b"fuzz bytes")

    blob = await (await authed(blobs_pb2_grpc.BlobServiceStub, channel)).Upload(chunks())
    uploads = await authed(uploads_pb2_grpc.UploadServiceStub, channel)
    upload = await uploads.Create(uploads_pb2.CreateUploadRequest())
    return [
        net.uuid,
        "fuzznet",
        inst.uuid,
        "fuzzvm",
        blob.uuid,
        f"sf://blob/{blob.uuid}",
        upload.uuid,
        f"sf://upload/system/{upload.uuid}",
        "node1",
        "fuzzuser",
    ]


async def test_no_input_makes_the_control_plane_fail(plane: ControlPlane, node: FakeNode) -> None:
    """Random and hostile requests to every unary method: never INTERNAL or UNKNOWN."""
    rng = random.Random(SEED)
    target = f"127.0.0.1:{plane.port}"
    bad: list[str] = []
    calls = 0
    codes: dict[str, set[str]] = {}
    started = time.monotonic()
    async with grpc.aio.insecure_channel(target) as channel:
        strings = (*STRINGS, *await real_objects(channel))
        token = await bearer(channel)
        user_token = await bearer(channel, "fuzzuser", "fuzzuser-key")
        methods = unary_methods()
        assert len(methods) > 50
        for path, method in methods:
            cls = message_factory.GetMessageClass(method.input_type)
            out_cls = message_factory.GetMessageClass(method.output_type)
            call: grpc.aio.UnaryUnaryMultiCallable[Any, Any] = channel.unary_unary(
                path,
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=out_cls.FromString,
            )
            seen = codes.setdefault(path, set())
            for _ in range(CALLS_PER_METHOD):
                if time.monotonic() - started > BUDGET_SECONDS:
                    break
                request = cls()
                try:
                    fill(rng, request, strings)
                except (ValueError, TypeError):
                    continue
                harmless(method, request)
                metadata = token if rng.random() < 0.7 else user_token
                if rng.random() < 0.15:
                    metadata = (*metadata, ("x-namespace", rng.choice(NAMESPACES)))
                calls += 1
                try:
                    await call(request, metadata=metadata, timeout=10)
                    seen.add("OK")
                except grpc.aio.AioRpcError as exc:
                    seen.add(exc.code().name)
                    # A status message over grpc's 16 KiB limit arrives as RESOURCE_EXHAUSTED.
                    hidden = "metadata size exceeds" in (exc.details() or "")
                    if hidden or exc.code() in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN):
                        bad.append(f"{path} {exc.code().name} {exc.details()} <- {request}"[:600])
                    if exc.code() == grpc.StatusCode.UNAUTHENTICATED:
                        token = await bearer(channel)
                        user_token = await bearer(channel, "fuzzuser", "fuzzuser-key")
        assert calls > 500, f"only {calls} calls in the budget"
        assert bad == [], "\n".join(bad[:20])
        # Hostile enough to be refused, real enough to succeed, in most methods.
        refused = [p for p, seen in codes.items() if seen - {"OK"}]
        served = [p for p, seen in codes.items() if "OK" in seen]
        assert len(refused) > 0.8 * len(methods), codes
        assert len(served) > 0.3 * len(methods), codes
        health = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        stub: grpc.aio.UnaryUnaryMultiCallable[Any, Any] = channel.unary_unary(
            "/minicloud.v1.InstanceService/List",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=instances_pb2.ListInstancesResponse.FromString,
        )
        await stub(instances_pb2.ListInstancesRequest(), metadata=token, timeout=10)


def every_method() -> list[tuple[str, pb_descriptor.MethodDescriptor]]:
    """(path, descriptor) of every method of the public services, streaming ones too."""
    return [
        (f"/{service.full_name}/{method.name}", method)
        for module in MODULES
        for service in module.DESCRIPTOR.services_by_name.values()
        for method in service.methods
    ]


async def send_raw(
    channel: grpc.aio.Channel,
    path: str,
    method: pb_descriptor.MethodDescriptor,
    raw: bytes,
    md: Any,
) -> None:
    """Send raw as the (first) request message of method; read its (first) answer."""
    kinds = (method.client_streaming, method.server_streaming)
    same = {"request_serializer": lambda b: b, "response_deserializer": lambda b: b}

    async def one() -> AsyncIterator[bytes]:
        yield raw

    if kinds == (False, False):
        await channel.unary_unary(path, **same)(raw, metadata=md, timeout=10)
    elif kinds == (False, True):
        async for _ in channel.unary_stream(path, **same)(raw, metadata=md, timeout=10):
            break
    elif kinds == (True, False):
        await channel.stream_unary(path, **same)(one(), metadata=md, timeout=10)
    else:
        async for _ in channel.stream_stream(path, **same)(one(), metadata=md, timeout=10):
            break


async def test_undecodable_messages_are_invalid_argument(plane: ControlPlane) -> None:
    """Bytes that are no valid message (a cut-off field or tag) are refused, by every method."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        metadata = await bearer(channel)
        wrong = []
        cases = [(path, method, raw) for path, method in every_method() for raw in CUT_OFF]
        # Bad UTF-8 in a string field (field 1 of both).
        for path in ("/minicloud.v1.InstanceService/Get", "/minicloud.v1.AuthService/Token"):
            method = next(m for p, m in every_method() if p == path)
            cases.append((path, method, b"\x0a\x02\xff\xfe"))
        assert len(cases) > 130
        for path, method, raw in cases:
            try:
                await send_raw(channel, path, method, raw, metadata)
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.INVALID_ARGUMENT:
                    wrong.append(f"{path} {raw!r}: {exc.code().name} {exc.details()}")
            else:
                wrong.append(f"{path} accepted {raw!r}")
        assert wrong == [], "\n".join(wrong)
