"""Signed tokens over real gRPC and the gateway: checked locally, with the public keys alone."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from shakenfist_client import apiclient

from common.accesstoken import Claims, mint, new_token_id
from common.signing import SigningKey, load_signing_key, new_signing_key
from controlplane.app import ControlPlane, start
from controlplane.signingkeys import public_path
from controlplane.store.memory import MemoryStore
from protos import auth_pb2, auth_pb2_grpc, instances_pb2, instances_pb2_grpc
from tests.component.conftest import SYSTEM_KEY, bearer, plane_settings
from tests.component.test_gateway import Rest, start_gateway, token_keys


def plane_key(plane: ControlPlane) -> SigningKey:
    """The plane's own signing key, read from its file."""
    return load_signing_key(plane.parts.settings.signing_key_path().read_bytes())


def system_claims(plane: ControlPlane, issued_at: int, ttl: int = 900) -> Claims:
    """Claims a token of the plane's system key would carry, issued at issued_at."""
    ns = plane.namespaces.get("system", "system")
    nonce = ns.keys["deploy"].nonce
    return Claims("system", "deploy", nonce, issued_at, issued_at + ttl, new_token_id())


async def code_of(call: Any) -> grpc.StatusCode:
    """The status code a call ends with."""
    try:
        await call
    except grpc.aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


async def list_code(port: int, token: str) -> grpc.StatusCode:
    """The status of InstanceService.List called with a bearer token."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as ch:
        stub = instances_pb2_grpc.InstanceServiceStub(ch)
        metadata = (("authorization", f"Bearer {token}"),)
        return await code_of(stub.List(instances_pb2.ListInstancesRequest(), metadata=metadata))


def write_public(path: Path, *keys: SigningKey) -> Path:
    path.write_bytes(b"".join(k.public.pem() for k in keys))
    return path


async def test_the_signing_key_is_made_once_0600_with_its_public_half(tmp_path: Path) -> None:
    """First start writes the key (0600) and <key>.pub; a restart keeps it, so tokens survive."""
    settings = plane_settings(tmp_path / "cp")
    plane = await start(settings)
    try:
        key_file = settings.signing_key_path()
        assert key_file == tmp_path / "cp" / "token-signing-key"
        assert key_file.stat().st_mode & 0o777 == 0o600
        assert public_path(key_file).read_bytes() == plane_key(plane).public.pem()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
            token = (await bearer(ch))[0][1].removeprefix("Bearer ")
        kid = plane_key(plane).key_id
    finally:
        await plane.stop(0)
    plane = await start(settings)
    try:
        assert plane_key(plane).key_id == kid
        assert await list_code(plane.port, token) == grpc.StatusCode.OK
    finally:
        await plane.stop(0)


async def test_a_signing_key_others_can_read_stops_the_start(tmp_path: Path) -> None:
    """A key file readable by group or others is refused at start, naming the file."""
    settings = plane_settings(tmp_path / "cp")
    settings.signing_key_path().parent.mkdir(parents=True)
    settings.signing_key_path().write_bytes(new_signing_key().pem())
    settings.signing_key_path().chmod(0o644)
    with pytest.raises(OSError, match="token-signing-key has mode 644"):
        await start(settings)
    settings.signing_key_path().write_bytes(b"not a key")
    settings.signing_key_path().chmod(0o600)
    with pytest.raises(OSError, match="cannot use token signing key"):
        await start(settings)


async def test_the_control_plane_refuses_tokens_it_cannot_verify(plane: ControlPlane) -> None:
    """Another key's token, an expired or a future one: UNAUTHENTICATED; its own works."""
    now = int(time.time())
    own = plane_key(plane)
    cases = {
        mint(own, system_claims(plane, now)): grpc.StatusCode.OK,
        mint(new_signing_key(), system_claims(plane, now)): grpc.StatusCode.UNAUTHENTICATED,
        mint(own, system_claims(plane, now - 2000)): grpc.StatusCode.UNAUTHENTICATED,
        mint(own, system_claims(plane, now + 600)): grpc.StatusCode.UNAUTHENTICATED,
    }
    for token, code in cases.items():
        assert await list_code(plane.port, token) == code


async def test_deleting_a_namespace_still_revokes_its_tokens(plane: ControlPlane) -> None:
    """A genuine, unexpired token of a deleted namespace is refused by the control plane."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as ch:
        admin = auth_pb2_grpc.NamespaceServiceStub(ch)
        metadata = await bearer(ch)
        await admin.Create(
            auth_pb2.CreateNamespaceRequest(name="gone", key_name="k", key="gone-key"),
            metadata=metadata,
        )
        token = (await bearer(ch, "gone", "gone-key"))[0][1].removeprefix("Bearer ")
        assert await list_code(plane.port, token) == grpc.StatusCode.OK
        await admin.Delete(auth_pb2.NamespaceRef(name="gone"), metadata=metadata)
    assert await list_code(plane.port, token) == grpc.StatusCode.UNAUTHENTICATED


async def test_control_planes_take_each_others_tokens_when_given_the_public_key(
    tmp_path: Path,
) -> None:
    """Two control planes on one store: B takes A's tokens once A's public key is in its list."""
    store = MemoryStore()
    a = await start(plane_settings(tmp_path / "a"), store=store)
    b = c = None
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{a.port}") as ch:
            token = (await bearer(ch))[0][1].removeprefix("Bearer ")
        a_pub = public_path(a.parts.settings.signing_key_path())
        b = await start(
            replace(plane_settings(tmp_path / "b"), token_public_keys=(a_pub,)), store=store
        )
        c = await start(plane_settings(tmp_path / "c"), store=store)
        assert await list_code(b.port, token) == grpc.StatusCode.OK
        assert await list_code(c.port, token) == grpc.StatusCode.UNAUTHENTICATED
    finally:
        for plane in (c, b, a):
            if plane is not None:
                await plane.stop(0)


async def test_a_missing_public_key_file_stops_the_start(tmp_path: Path) -> None:
    """A configured public key file that does not exist is an error at start, naming it."""
    missing = tmp_path / "nope.pub"
    settings = replace(plane_settings(tmp_path / "cp"), token_public_keys=(missing,))
    with pytest.raises(OSError, match=r"nope\.pub"):
        await start(settings)


# -- the gateway --------------------------------------------------------------


@pytest.fixture
async def gateway(plane: ControlPlane) -> Any:
    """A gateway holding the plane's public key, and an HTTP session."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}", token_keys(plane))
    async with aiohttp.ClientSession() as session:
        yield Rest(session, url)
    await runner.cleanup()


async def test_the_gateway_refuses_bad_tokens_before_reading_the_body(
    gateway: Rest, plane: ControlPlane
) -> None:
    """No, garbled, forged, expired or foreign token: 401, even with a broken or huge body."""
    now = int(time.time())
    own = plane_key(plane)
    good = mint(own, system_claims(plane, now))
    body, _, _ = good.rpartition(".")
    for token in (
        "",
        "garbage",
        f"{body}.AAAA",
        mint(own, system_claims(plane, now - 2000)),
        mint(own, system_claims(plane, now + 600)),
        mint(new_signing_key(), system_claims(plane, now)),
    ):
        gateway.token = token
        for raw in (b"{not json", b"x" * (2 << 20)):
            status, answer = await gateway.call("POST", "/instances", raw=raw)
            assert status == 401, (token, answer)
            assert answer["error"].startswith("unauthorized: ")
    gateway.token = good
    status, answer = await gateway.call("POST", "/instances", raw=b"{not json")
    assert status == 400 and "not valid JSON" in answer["error"]
    assert await gateway.call("GET", "/instances") == (200, [])


async def test_the_gateway_answers_401_without_asking_the_control_plane(
    tmp_path: Path,
) -> None:
    """With no control plane behind it, a bad token is still 401 (nothing was forwarded)."""
    key, other = new_signing_key(), new_signing_key()
    pub = write_public(tmp_path / "keys.pub", key)
    runner, url = await start_gateway("127.0.0.1:1", (pub,))
    now = int(time.time())
    claims = Claims("system", "deploy", "n", now, now + 900)
    try:
        async with aiohttp.ClientSession() as session:
            rest = Rest(session, url)
            rest.token = mint(other, claims)
            status, answer = await rest.call("GET", "/instances")
            assert status == 401 and "unknown key" in answer["error"]
            rest.token = mint(key, claims)
            status, _ = await rest.call("GET", "/instances")
            assert status == 406  # forwarded: UNAVAILABLE, no control plane is there
            assert (await rest.call("GET", "/healthz"))[0] != 401
    finally:
        await runner.cleanup()


async def test_the_gateway_takes_every_key_it_holds(tmp_path: Path) -> None:
    """Rotation: old and new public keys in its list, tokens of both pass its check."""
    old, new = new_signing_key(), new_signing_key()
    files = (write_public(tmp_path / "old.pub", old), write_public(tmp_path / "new.pub", new))
    runner, url = await start_gateway("127.0.0.1:1", files)
    now = int(time.time())
    claims = Claims("system", "deploy", "n", now, now + 900)
    try:
        async with aiohttp.ClientSession() as session:
            rest = Rest(session, url)
            for key in (old, new):
                rest.token = mint(key, claims)
                assert (await rest.call("GET", "/instances"))[0] != 401
    finally:
        await runner.cleanup()


async def test_a_gateway_with_a_bad_key_file_does_not_start(tmp_path: Path) -> None:
    """A missing or unreadable public key file stops the gateway at start, naming it."""
    with pytest.raises(OSError, match=r"missing\.pub"):
        await start_gateway("127.0.0.1:1", (tmp_path / "missing.pub",))
    (tmp_path / "bad.pub").write_text("hello")
    with pytest.raises(OSError, match=r"bad\.pub"):
        await start_gateway("127.0.0.1:1", (tmp_path / "bad.pub",))


async def test_shakenfist_client_logs_in_and_renews_a_refused_token(
    gateway: Rest, plane: ControlPlane
) -> None:
    """The real client logs in through the gateway, and logs in again when its token expires."""
    now = int(time.time())
    expired = mint(plane_key(plane), system_claims(plane, now - 2000))

    def use() -> tuple[int, int]:
        client = apiclient.Client(
            base_url=gateway.url,
            namespace="system",
            key=SYSTEM_KEY,
            suppress_configuration_lookup=True,
            sync_request_timeout=20,
        )
        before = len(client.get_instances())
        client.cached_auth = f"Bearer {expired}"
        after = len(client.get_instances())
        assert client.cached_auth != f"Bearer {expired}"
        return before, after

    assert await asyncio.to_thread(use) == (0, 0)
