"""Two clusters on one host, sharing its libvirtd and even a node name, leave each other be.

Each cluster has its own CA, control plane, gateway and node agent; both
node agents are called the same. Each creates, reboots and deletes a real
guest while the other's runs, and a restarted node agent (whose control
plane then removes every domain of its node it does not know) leaves the
other cluster's guest running.
"""

from __future__ import annotations

import os
import signal
import uuid as uuidlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.conftest import Cluster, running, settled, small_spec, virsh

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def clusters(guest_image: Path) -> Iterator[tuple[Cluster, Cluster]]:
    """Two clusters whose node agents share one name."""
    root = Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t"))
    name = f"twin-{uuidlib.uuid4().hex[:6]}"
    first = Cluster.launch(guest_image, root, node_name=name)
    try:
        second = Cluster.launch(guest_image, root, node_name=name)
        try:
            yield first, second
        finally:
            second.shutdown()
    finally:
        first.shutdown()


def domstate(uuid: str) -> str:
    return virsh("domstate", f"mc-{uuid}").stdout.strip()


def test_each_cluster_creates_reboots_and_deletes_while_the_other_runs(
    clusters: tuple[Cluster, Cluster],
) -> None:
    """Guests of both clusters run side by side; each cluster's actions touch only its own."""
    first, second = clusters
    assert first.ca.cluster_id() != second.ca.cluster_id()
    with first.client() as a, second.client() as b:
        ours = a.create(small_spec("first-guest"))["uuid"]
        theirs = b.create(small_spec("second-guest"))["uuid"]
        assert running(a.wait(ours, settled, timeout=180)), first.logs()
        assert running(b.wait(theirs, settled, timeout=180)), second.logs()
        assert {ours, theirs} <= set(virsh("list", "--uuid").stdout.split())
        assert theirs not in {i["uuid"] for i in a.list_instances()}

        # A restarted node agent lists its node's domains; its control plane removes
        # those it does not know: the other cluster's guest must not be among them.
        first.stop("nodeagent", signal.SIGKILL)
        first.start_node()
        first.wait_node_connected(2)
        assert a.power(ours, "hard-reboot")["power_state"] == "on"
        assert b.power(theirs, "soft-reboot")["power_state"] == "on"
        assert domstate(theirs) == "running" and domstate(ours) == "running"

        a.delete(ours)
        a.wait(ours, lambda i: i["state"] == "deleted", timeout=120)
        assert domstate(theirs) == "running"
        assert b.get(theirs)["power_state"] == "on"
        b.delete(theirs)
        b.wait(theirs, lambda i: i["state"] == "deleted", timeout=120)
    for cluster in clusters:
        assert "removing domain unknown" not in (cluster.root / "controlplane.log").read_text()
