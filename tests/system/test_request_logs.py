"""One REST call followed through the logs of the gateway, the control plane and the node agent.

Real processes (gateway, control plane, node agent) on 127.0.0.1; the node
agent drives the fake hypervisor, since what is followed is the request, not
a guest.
"""

from __future__ import annotations

import json
import os
import urllib.request
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.system.conftest import Cluster, wait_until

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def cluster(guest_image: Path) -> Iterator[Cluster]:
    """A cluster whose node agent runs the fake hypervisor."""
    c = Cluster.launch(
        guest_image,
        Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t")),
        node_env={"MINICLOUD_NODE_HYPERVISOR": "fake"},
    )
    try:
        yield c
    finally:
        c.shutdown()


def rest(
    cluster: Cluster, method: str, path: str, body: Any, headers: dict[str, str]
) -> tuple[Any, dict[str, str]]:
    """One JSON call to the gateway: the decoded answer and the response headers."""
    request = urllib.request.Request(
        cluster.rest_url + path,
        data=json.dumps(body).encode(),
        method=method,
        headers={"Content-Type": "application/json", **headers},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read()), dict(response.headers)


def test_one_rest_calls_request_id_is_in_every_process_log(cluster: Cluster) -> None:
    """A REST create's X-Request-ID is in the gateway's, control plane's and node's logs."""
    auth, _ = rest(cluster, "POST", "/auth", {"namespace": "system", "key": cluster.key}, {})
    request_id = f"test-{uuidlib.uuid4().hex[:12]}"
    created, headers = rest(
        cluster,
        "POST",
        "/instances",
        {"name": "traced", "cpus": 1, "memory": 256, "disk": [{"size": 1, "base": "debian:11"}]},
        {"Authorization": f"Bearer {auth['access_token']}", "X-Request-ID": request_id},
    )
    assert headers["X-Request-ID"] == request_id

    def logged(proc: str) -> bool:
        return request_id in (cluster.root / f"{proc}.log").read_text(errors="replace")

    wait_until(lambda: logged("nodeagent"), 30, "the node agent to log the request id")
    for proc in ("gateway", "controlplane", "nodeagent"):
        assert logged(proc), f"{proc}.log has no line with {request_id}"
    node_lines = [
        line
        for line in (cluster.root / "nodeagent.log").read_text().splitlines()
        if request_id in line
    ]
    assert any(created["uuid"] in line for line in node_lines)


def test_every_process_serves_metrics(cluster: Cluster) -> None:
    """The real processes serve /metrics on their own ports; the node agent is ready."""
    wanted = {
        "controlplane": ("minicloud_rpc_requests", "minicloud_instances", "minicloud_nodes"),
        "gateway": ("minicloud_http_requests",),
        "nodeagent": ("minicloud_node_agent_commands", "minicloud_control_stream_up"),
    }
    for proc, families in wanted.items():
        names = {f.name for f in text_string_to_metric_families(cluster.metrics(proc))}
        assert set(families) <= names, (proc, names)
    assert json.loads(cluster.metrics("nodeagent", "/readyz")) == {"status": "ready"}
