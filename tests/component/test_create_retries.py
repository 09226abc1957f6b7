"""Creates that may be retried: a client request id makes them idempotent, and while nodes
reconnect the answer is UNAVAILABLE "retry", which the client library retries."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp
import grpc
import pytest

from client.api import Client
from controlplane.app import ControlPlane, start
from protos import instances_pb2
from tests.component.conftest import (
    SYSTEM_KEY,
    Api,
    FakeNode,
    create_request,
    make_api,
    plane_settings,
    start_fake_node,
)
from tests.component.test_gateway import Rest, start_gateway


def with_id(name: str, request_id: str) -> instances_pb2.CreateInstanceRequest:
    request = create_request(name)
    request.client_request_id = request_id
    return request


async def test_a_create_retried_with_its_request_id_returns_the_first_instance(
    api: Api, node: FakeNode
) -> None:
    """The same id twice is one instance; another id with that name is ALREADY_EXISTS."""
    first = await api.Create(with_id("once", "req-1"))
    again = await api.Create(with_id("once", "req-1"))
    assert again.uuid == first.uuid
    listed = await api.List(instances_pb2.ListInstancesRequest())
    assert [i.uuid for i in listed.instances] == [first.uuid]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await api.Create(with_id("once", "req-2"))
    assert caught.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_request_ids_are_per_namespace_and_checked(api: Api, node: FakeNode) -> None:
    """A bad id is INVALID_ARGUMENT before anything is made."""
    for bad in ("has space", "x" * 129, "tab\there", "é"):
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await api.Create(with_id("bad", bad))
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await api.List(instances_pb2.ListInstancesRequest())
    assert list(listed.instances) == []


async def test_concurrent_creates_with_one_id_make_one_instance(api: Api, node: FakeNode) -> None:
    """Ten creates racing with one id: one instance, every caller gets it."""
    made = await asyncio.gather(*(api.Create(with_id("racer", "same")) for _ in range(10)))
    assert len({m.uuid for m in made}) == 1


async def test_while_nodes_reconnect_a_create_is_unavailable_and_the_client_retries(
    tmp_path: Path,
) -> None:
    """After a restart the known node is reconnecting: UNAVAILABLE, then the retry lands."""
    plane = await start(plane_settings(tmp_path / "cp"))
    port = plane.port
    node = await start_fake_node(f"127.0.0.1:{port}")
    await node.stop()
    await plane.stop(0)
    plane = await start(plane_settings(tmp_path / "cp", port))
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = await make_api(channel)
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await api.Create(create_request("early"))
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "nodes are reconnecting (node1); retry" in (caught.value.details() or "")

        def create() -> dict[str, object]:
            with Client(f"127.0.0.1:{port}", "system", SYSTEM_KEY, 10, plaintext=True) as c:
                spec = {"name": "patient", "cpus": 1, "memory": 256, "disks": [{"size_gb": 1}]}
                return c.create(spec)

        async def node_back_later() -> FakeNode:
            await asyncio.sleep(1.0)
            return await start_fake_node(f"127.0.0.1:{port}")

        made, back = await asyncio.gather(asyncio.to_thread(create), node_back_later())
        assert made["node"] == "node1"
        await back.close()
    finally:
        await plane.stop(0)


async def test_the_gateway_sends_the_request_id_and_keeps_shaken_fists_answer(
    plane: ControlPlane, node: FakeNode, tmp_path: Path
) -> None:
    """A REST create retried with its X-Request-ID is one instance."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    try:
        async with aiohttp.ClientSession() as session:
            rest = Rest(session, url)
            await rest.login()
            body = {"name": "rest-once", "cpus": 1, "memory": 256, "disk": [{"size": 1}]}
            headers = {"Authorization": f"Bearer {rest.token}", "X-Request-ID": "rest-create-1"}
            answers = []
            for _ in range(2):
                async with session.post(url + "/instances", json=body, headers=headers) as r:
                    assert r.status == 200, await r.text()
                    answers.append(await r.json())
            assert answers[0]["uuid"] == answers[1]["uuid"]
    finally:
        await runner.cleanup()
