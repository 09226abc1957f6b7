"""Nodes over REST: the real shakenfist-client library and sf-client against the gateway."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from controlplane.app import ControlPlane
from tests.component.conftest import SYSTEM_KEY, FakeNode, namespace_api
from tests.component.test_gateway import Rest, start_gateway

SF_CLIENT = Path(sys.executable).parent / "sf-client"


@pytest.fixture
async def url(plane: ControlPlane, node: FakeNode) -> AsyncIterator[str]:
    """A gateway in front of a plane with one fake node."""
    runner, found = await start_gateway(f"127.0.0.1:{plane.port}")
    yield found
    await runner.cleanup()


async def sf(url: str, namespace: str = "system", key: str = SYSTEM_KEY) -> Any:
    """A shakenfist-client library client of the gateway (made in a thread: it logs in)."""
    return await asyncio.to_thread(_sf, url, namespace, key)


def _sf(url: str, namespace: str, key: str) -> Any:
    """The client, made synchronously (it calls the gateway while constructed)."""
    from shakenfist_client import apiclient

    return apiclient.Client(
        base_url=url,
        namespace=namespace,
        key=key,
        suppress_configuration_lookup=True,
        async_strategy="pause",
    )


async def sf_client(url: str, *args: str) -> str:
    """Run the sf-client CLI against the gateway; it must exit 0. Its output."""
    env = {
        **os.environ,
        "SHAKENFIST_API_URL": url,
        "SHAKENFIST_NAMESPACE": "system",
        "SHAKENFIST_KEY": SYSTEM_KEY,
        "HOME": "/nonexistent",
    }
    proc = await asyncio.create_subprocess_exec(
        str(SF_CLIENT),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, f"sf-client {args}: {proc.returncode}\n{out!r}\n{err!r}"
    return out.decode()


async def test_the_client_library_lists_and_gets_nodes(url: str) -> None:
    """get_nodes and get_node give Shaken Fist's keys (name, ip, lastseen, version, state)."""
    client = await sf(url)
    nodes = await asyncio.to_thread(client.get_nodes)
    assert [n["name"] for n in nodes] == ["node1"]
    for key in ("name", "ip", "lastseen", "version", "release", "state", "is_hypervisor"):
        assert key in nodes[0], key
    assert nodes[0]["state"] == "created" and nodes[0]["ip"] == "127.0.0.1"
    node = await asyncio.to_thread(client.get_node, "node1")
    assert node["name"] == "node1" and node["qemu_version"] == "8.2.0-fake"
    assert node["lastseen"] > 0 and node["connected"] is True


async def test_the_client_library_reads_node_events_and_metadata(url: str) -> None:
    """Node events, and metadata set, read and deleted, as the client calls them."""
    client = await sf(url)
    events = await asyncio.to_thread(client.get_node_events, "node1")
    assert "node connected" in [e["message"] for e in events]
    await asyncio.to_thread(client.set_node_metadata_item, "node1", "rack", "r4")
    assert await asyncio.to_thread(client.get_node_metadata, "node1") == {"rack": "r4"}
    await asyncio.to_thread(client.delete_node_metadata_item, "node1", "rack")
    assert await asyncio.to_thread(client.get_node_metadata, "node1") == {}
    status = await asyncio.to_thread(client.get_node_events, "node1", "status", 5)
    assert status and all(e["type"] == "status" for e in status)


async def test_sf_client_node_list_and_show(url: str) -> None:
    """sf-client's node list and node show run unchanged and print the node."""
    listed = await sf_client(url, "node", "list")
    assert "node1" in listed and "127.0.0.1" in listed and "created" in listed
    shown = await sf_client(url, "node", "show", "node1")
    assert "node1" in shown and "created" in shown and "last seen" in shown
    as_json = json.loads(await sf_client(url, "--json", "node", "show", "node1"))
    assert as_json["name"] == "node1" and as_json["metadata"] == {}
    simple = await sf_client(url, "--simple", "node", "list")
    assert simple.splitlines()[0] == "name,ip,lastseen,state,roles,version"


async def test_other_namespaces_get_401_for_nodes(url: str, plane: ControlPlane) -> None:
    """Nodes are the administrator's: another namespace gets 401, as from Shaken Fist."""
    import aiohttp
    import grpc

    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        await namespace_api(channel, "tenant")
    async with aiohttp.ClientSession() as session:
        rest = Rest(session, url)
        await rest.login("tenant", "tenant-key")
        for method, path in (
            ("GET", "/nodes"),
            ("GET", "/nodes/node1"),
            ("DELETE", "/nodes/node1"),
            ("GET", "/nodes/node1/events"),
            ("GET", "/nodes/node1/metadata"),
        ):
            status, answer = await rest.call(method, path)
            assert status == 401, (method, path, answer)
        rest_admin = Rest(session, url)
        await rest_admin.login()
        status, _ = await rest_admin.call("GET", "/nodes/nope")
        assert status == 404
