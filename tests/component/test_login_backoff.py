"""Repeated bad keys slow down per namespace and per caller; key checks run bounded."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import grpc
import pytest

from controlplane.app import ControlPlane, start
from protos import auth_pb2, auth_pb2_grpc
from tests.component.conftest import SYSTEM_KEY, authed, plane_settings

BACKOFF = 0.4


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane that allows two free failures, then backs off 0.4 s, 0.8 s, ..."""
    settings = replace(
        plane_settings(tmp_path / "cp"),
        login_free_failures=2,
        login_backoff=BACKOFF,
        login_backoff_max=2.0,
    )
    cp = await start(settings)
    yield cp
    await cp.stop(0)


async def login(
    channel: grpc.aio.Channel, namespace: str, key: str, client: str = ""
) -> tuple[grpc.StatusCode, str]:
    """A Token call's status and message; client is the address a trusted proxy passes on."""
    metadata = (("x-minicloud-client-address", client),) if client else ()
    try:
        await auth_pb2_grpc.AuthServiceStub(channel).Token(
            auth_pb2.TokenRequest(namespace=namespace, key=key), metadata=metadata
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def make_namespace(channel: grpc.aio.Channel, name: str, key: str) -> None:
    namespaces = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
    await namespaces.Create(auth_pb2.CreateNamespaceRequest(name=name, key_name="k", key=key))


async def test_the_right_key_waits_out_the_backoff_and_no_longer(guarded: ControlPlane) -> None:
    """After the free failures, even the right key is refused until the backoff ends, then works."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        await make_namespace(channel, "team", "right-key")
        for _ in range(2):
            assert await login(channel, "team", "wrong") == (
                grpc.StatusCode.UNAUTHENTICATED,
                "unauthorized",
            )
        assert (await login(channel, "team", "wrong"))[0] == grpc.StatusCode.UNAUTHENTICATED
        code, message = await login(channel, "team", "right-key")
        assert code == grpc.StatusCode.UNAUTHENTICATED and "too many failed logins" in message
        await asyncio.sleep(BACKOFF + 0.1)
        assert await login(channel, "team", "right-key") == (grpc.StatusCode.OK, "")
        assert (await login(channel, "team", "wrong"))[0] == grpc.StatusCode.UNAUTHENTICATED
        assert await login(channel, "team", "right-key") == (grpc.StatusCode.OK, "")


async def test_a_key_already_verified_is_not_held_back(guarded: ControlPlane) -> None:
    """A flood of bad keys against system does not keep out a key that logged in before."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        assert await login(channel, "system", SYSTEM_KEY) == (grpc.StatusCode.OK, "")
        for _ in range(5):
            await login(channel, "system", "wrong", client="203.0.113.9")
        assert (await login(channel, "system", "wrong"))[1].startswith("too many failed logins")
        assert await login(channel, "system", SYSTEM_KEY) == (grpc.StatusCode.OK, "")


async def test_each_caller_address_is_slowed_on_its_own(guarded: ControlPlane) -> None:
    """Bad keys from one address slow that address in every namespace, not other addresses."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}") as channel:
        await make_namespace(channel, "a", "key-a")
        await make_namespace(channel, "b", "key-b")
        for namespace in ("a", "a", "nosuch"):
            await login(channel, namespace, "wrong", client="198.51.100.1")
        code, message = await login(channel, "b", "key-b", client="198.51.100.1")
        assert code == grpc.StatusCode.UNAUTHENTICATED and "too many" in message
        assert await login(channel, "b", "key-b", client="198.51.100.2") == (
            grpc.StatusCode.OK,
            "",
        )


async def test_key_checks_run_bounded_and_the_rest_are_refused(tmp_path: Path) -> None:
    """With one check at a time and one waiting, a burst of logins is partly UNAVAILABLE."""
    settings = replace(
        plane_settings(tmp_path / "cp"), login_concurrency=1, login_queue=1, login_free_failures=99
    )
    cp = await start(settings)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{cp.port}") as channel:
            await make_namespace(channel, "burst", "key")
            results = await asyncio.gather(
                *(login(channel, "burst", f"wrong-{i}", client=f"192.0.2.{i}") for i in range(8))
            )
        codes = [code for code, _ in results]
        assert grpc.StatusCode.UNAVAILABLE in codes
        assert set(codes) <= {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.UNAUTHENTICATED}
        assert all("in progress" in m for c, m in results if c == grpc.StatusCode.UNAVAILABLE)
    finally:
        await cp.stop(0)
