"""Two clusters on one host, sharing its libvirtd and even a node name, leave each other be.

Each cluster has its own CA, control plane, gateway and node agent; both
node agents are called the same. Each creates, reboots and deletes a real
guest while the other's runs, and a restarted node agent (whose control
plane then removes every domain of its node it does not know) leaves the
other cluster's guest running. Both make a network under the same device
prefix, sharing one host-wide claims file: restarting either node agent
(whose control plane then removes every network it lists and does not know)
leaves the other's bridge in place.
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import subprocess
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
    tag = uuidlib.uuid4().hex[:6]
    name = f"twin-{tag}"
    claims = root / f"claims-{tag}.json"
    third = random.randint(200, 230)

    def launch(index: int) -> Cluster:
        # One host: one claims file; the same device prefix (mc), each its own egress
        # bridge and floating range (the claims refuse a shared one).
        return Cluster.launch(
            guest_image,
            root,
            node_name=name,
            controlplane_env={"MINICLOUD_FLOATING_NETBLOCK": f"192.168.{third + index}.0/24"},
            node_env={
                "MINICLOUD_NODE_NETWORK_CLAIMS": str(claims),
                "MINICLOUD_NODE_NETWORK_EGRESS_BRIDGE": f"tw{tag}{index}",
            },
        )

    first = launch(0)
    try:
        second = launch(1)
        try:
            yield first, second
        finally:
            second.shutdown()
    finally:
        first.shutdown()


def bridge_exists(network_uuid: str) -> bool:
    """Whether the bridge of a network (default prefix mc) is on the host."""
    bridge = "mcb-" + hashlib.sha256(network_uuid.encode()).hexdigest()[:8]
    shown = subprocess.run(["ip", "link", "show", "dev", bridge], capture_output=True, check=False)
    return shown.returncode == 0


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


def test_networks_under_one_prefix_survive_the_other_clusters_restarts(
    clusters: tuple[Cluster, Cluster],
) -> None:
    """A node agent lists only its cluster's networks: restarts remove none of the other's."""
    first, second = clusters
    with first.client() as a, second.client() as b:
        nets = {
            "first": a.create_network("twin-net", "10.231.0.0/24", provide_nat=False)["uuid"],
            "second": b.create_network("twin-net", "10.232.0.0/24", provide_nat=False)["uuid"],
        }
        ours = a.create(small_spec("first-net", networks=[{"network_uuid": "twin-net"}]))
        theirs = b.create(small_spec("second-net", networks=[{"network_uuid": "twin-net"}]))
        assert running(a.wait(ours["uuid"], settled, timeout=180)), first.logs()
        assert running(b.wait(theirs["uuid"], settled, timeout=180)), second.logs()
        assert bridge_exists(nets["first"]) and bridge_exists(nets["second"])
        for cluster in (first, second):
            log = (cluster.root / "nodeagent.log").read_text(errors="replace")
            cluster.stop("nodeagent", signal.SIGKILL)
            cluster.start_node()
            cluster.wait_node_connected(log.count("connected to control plane") + 1)
            a.wait(ours["uuid"], running, timeout=60)
            b.wait(theirs["uuid"], running, timeout=60)
            assert bridge_exists(nets["first"]) and bridge_exists(nets["second"])
        for cluster, own, other in ((first, "first", "second"), (second, "second", "first")):
            record = next((cluster.node_dir).glob("network-record-*.json")).read_text()
            assert nets[own] in record and nets[other] not in record
            log = (cluster.root / "controlplane.log").read_text(errors="replace")
            assert nets[other] not in log
        a.delete(ours["uuid"])
        a.wait(ours["uuid"], lambda i: i["state"] == "deleted", timeout=120)
        a.delete_network(nets["first"])
        b.wait(theirs["uuid"], running, timeout=30)
        assert bridge_exists(nets["second"])
        b.delete(theirs["uuid"])
        b.wait(theirs["uuid"], lambda i: i["state"] == "deleted", timeout=120)
        b.delete_network(nets["second"])
