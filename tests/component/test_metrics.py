"""Each process's /metrics over HTTP on 127.0.0.1: the families exist and move as the cluster works;
the node agent's /readyz follows its control-plane stream."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from controlplane.app import ControlPlane, start
from gateway.app import serve
from gateway.metrics import METRICS_SERVER
from gateway.settings import GatewaySettings
from protos import agent_pb2_grpc, blobs_pb2_grpc, instances_pb2, instances_pb2_grpc
from tests.component.conftest import (
    Api,
    FakeNode,
    authed,
    create_request,
    plane_settings,
    start_fake_node,
)
from tests.component.test_agent_ops import agent_instance, execute, upload
from tests.component.test_gateway import start_gateway

Families = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(port: int) -> Families:
    """GET /metrics and parse it: sample name -> sorted labels -> value."""
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/metrics") as reply,
    ):
        assert reply.status == 200
        text = await reply.text()
    found: Families = {}
    for family in text_string_to_metric_families(text):
        found.setdefault(family.name, {})
        for sample in family.samples:
            found.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return found


def value(families: Families, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return families.get(name, {}).get(tuple(sorted(labels.items())), 0.0)


async def readyz(port: int) -> tuple[int, Any]:
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"http://127.0.0.1:{port}/readyz") as reply,
    ):
        return reply.status, await reply.json()


async def test_control_plane_metrics_move_with_a_create(
    plane: ControlPlane, node: FakeNode, api: Api
) -> None:
    """A create moves the RPC counter, the instance gauges, node commands and store timings."""
    before = await scrape(plane.metrics_port)
    for family in (
        "minicloud_rpc_requests",
        "minicloud_rpc_duration_seconds",
        "minicloud_store_operation_duration_seconds",
        "minicloud_instances",
        "minicloud_nodes",
        "minicloud_node_heartbeat_age_seconds",
        "minicloud_node_commands_in_flight",
        "minicloud_node_commands",
        "minicloud_node_command_duration_seconds",
        "minicloud_agent_operations",
        "minicloud_agent_operations_executing",
        "minicloud_blob_bytes",
    ):
        assert family in before, family
    assert value(before, "minicloud_nodes", state="created") == 1
    assert value(before, "minicloud_nodes", state="missing") == 0
    assert value(before, "minicloud_node_heartbeat_age_seconds", node=node.name) >= 0
    assert (("node", node.name),) in before["minicloud_node_commands_in_flight"]

    inst = await api.Create(create_request("metered"))
    await api.wait_for(inst.uuid, lambda i: i.state == "created" and i.power_state == "on")
    after = await scrape(plane.metrics_port)
    create = {"method": "InstanceService/Create", "code": "OK"}
    assert value(after, "minicloud_rpc_requests_total", **create) == (
        value(before, "minicloud_rpc_requests_total", **create) + 1
    )
    assert value(after, "minicloud_rpc_duration_seconds_count", method="InstanceService/Create")
    assert value(after, "minicloud_instances", state="created", power_state="on") == 1
    assert value(after, "minicloud_node_commands_total", command="CreateDomain", outcome="ok") == 1
    assert value(after, "minicloud_store_operation_duration_seconds_count", operation="commit") > 0

    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError):  # no token
            await instances_pb2_grpc.InstanceServiceStub(channel).List(
                instances_pb2.ListInstancesRequest()
            )
    refused = await scrape(plane.metrics_port)
    assert (
        value(
            refused,
            "minicloud_rpc_requests_total",
            method="InstanceService/List",
            code="UNAUTHENTICATED",
        )
        == 1
    )


async def test_agent_operations_and_blob_bytes_are_counted(
    plane: ControlPlane, node: FakeNode, api: Api
) -> None:
    """An execute counts queued, executing, complete; guest agents show ready; blob bytes count."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        agent = await authed(agent_pb2_grpc.AgentServiceStub, channel)
        blobs = await authed(blobs_pb2_grpc.BlobServiceStub, channel)
        uuid, guest = await agent_instance(api, node)
        try:
            assert (await execute(agent, uuid, "echo hi"))["state"] == "complete"
            node_now = await scrape(node.agent.metrics_port)
        finally:
            guest.stop()
        await upload(blobs, b"x" * 1000)
    plane_now = await scrape(plane.metrics_port)
    for state in ("queued", "executing", "complete"):
        assert (
            value(plane_now, "minicloud_agent_operations_total", command="execute", state=state)
            == 1
        ), state
    assert (
        value(
            plane_now,
            "minicloud_agent_operation_duration_seconds_count",
            command="execute",
            state="complete",
        )
        == 1
    )
    assert value(plane_now, "minicloud_blob_bytes_total", direction="in") >= 1000
    node_now = await scrape(node.agent.metrics_port)
    assert value(
        node_now, "minicloud_node_agent_commands_total", command="AgentExecute", outcome="ok"
    )
    assert "minicloud_guest_agents" in node_now


async def test_gateway_counts_rest_calls_by_route_template(
    plane: ControlPlane, node: FakeNode, api: Api
) -> None:
    """A REST call moves the gateway's counter under its route template, not its raw path."""
    inst = await api.Create(create_request("restme"))
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    try:
        port = runner.app[METRICS_SERVER].port
        async with aiohttp.ClientSession() as http:
            async with http.post(
                f"{url}/auth", json={"namespace": "system", "key": "component-test-system-key"}
            ) as reply:
                token = (await reply.json())["access_token"]
            headers = {"Authorization": f"Bearer {token}"}
            async with http.get(f"{url}/instances/{inst.uuid}", headers=headers) as reply:
                assert reply.status == 200
            async with http.get(f"{url}/no/such/route", headers=headers) as reply:
                assert reply.status == 404
        got = await scrape(port)
        assert "minicloud_http_request_duration_seconds" in got
        routes = {dict(labels)["route"] for labels in got["minicloud_http_requests_total"]}
        assert inst.uuid not in " ".join(routes)
        template = next(r for r in routes if r.startswith("/instances/{"))
        assert (
            value(got, "minicloud_http_requests_total", route=template, method="GET", code="200")
            == 1
        )
        assert value(got, "minicloud_http_requests_total", route="/auth", method="POST", code="200")
        assert (
            value(got, "minicloud_http_requests_total", route="unmatched", method="GET", code="404")
            == 1
        )
    finally:
        await runner.cleanup()


async def test_node_agent_readyz_follows_its_control_plane_stream(tmp_path: Path) -> None:
    """/healthz is 200 throughout; /readyz is 503 while the control plane is down, then 200."""
    plane = await start(plane_settings(tmp_path / "cp"))
    port = plane.port
    fake = await start_fake_node(f"127.0.0.1:{port}")
    try:
        metrics_port = fake.agent.metrics_port
        assert await readyz(metrics_port) == (200, {"status": "ready"})
        families = await scrape(metrics_port)
        assert value(families, "minicloud_control_stream_up") == 1
        assert "minicloud_libvirt_call_duration_seconds" in families
        assert "minicloud_node_agent_commands" in families
        await plane.stop(0)
        await asyncio.wait_for(_until(lambda: not fake.stream.connected.is_set()), 10)
        status, body = await readyz(metrics_port)
        assert status == 503 and "control plane" in body["reason"]
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{metrics_port}/healthz") as reply,
        ):
            assert reply.status == 200
        assert value(await scrape(metrics_port), "minicloud_control_stream_up") == 0
        plane = await start(plane_settings(tmp_path / "cp", port))
        await asyncio.wait_for(fake.stream.connected.wait(), 10)
        assert (await readyz(metrics_port))[0] == 200
    finally:
        await fake.close()
        await plane.stop(0)


async def _until(predicate: Any) -> None:
    while not predicate():
        await asyncio.sleep(0.02)


def test_a_taken_metrics_address_stops_the_node_agent_with_one_clear_line(tmp_path: Path) -> None:
    """The node agent's console script exits 1 with "cannot start" and the metrics address."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-c", "from nodeagent.app import main; main()"],
            env={
                **os.environ,
                "MINICLOUD_NODE_HYPERVISOR": "fake",
                "MINICLOUD_NODE_CONTROL_PLANE": "127.0.0.1:1",
                "MINICLOUD_NODE_DATA_DIR": str(tmp_path / "node"),
                "MINICLOUD_NODE_KEY": "k" * 32,
                "MINICLOUD_NODE_PLAINTEXT": "1",
                "MINICLOUD_NODE_METRICS_LISTEN": taken,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert "cannot start the node agent" in done.stderr
    assert taken in done.stderr and "Traceback" not in done.stderr


def test_a_taken_metrics_address_stops_the_control_plane_with_one_clear_line(
    tmp_path: Path,
) -> None:
    """The control plane's console script exits 1 with "cannot start" and the metrics address."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        done = subprocess.run(
            [sys.executable, "-c", "from controlplane.app import main; main()"],
            env={
                **os.environ,
                "MINICLOUD_LISTEN": "127.0.0.1:0",
                "MINICLOUD_DATA_DIR": str(tmp_path / "cp"),
                "MINICLOUD_SYSTEM_KEY": "k" * 32,
                "MINICLOUD_PLAINTEXT": "1",
                "MINICLOUD_METRICS_LISTEN": taken,
            },
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    assert done.returncode == 1, done.stderr
    assert "cannot start the control plane" in done.stderr
    assert f"{taken} for metrics" in done.stderr and "Traceback" not in done.stderr


async def test_a_gateway_on_a_taken_metrics_address_is_refused(plane: ControlPlane) -> None:
    """A gateway whose metrics address is taken fails to start, naming that address."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = f"127.0.0.1:{holder.getsockname()[1]}"
        settings = GatewaySettings(
            listen="127.0.0.1:0", api=f"127.0.0.1:{plane.port}", metrics_listen=taken
        )
        with pytest.raises(OSError, match=f"cannot listen on {taken} for metrics"):
            await serve(settings)
