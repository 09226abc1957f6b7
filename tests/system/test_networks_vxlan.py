"""One network across two node agents joined by VXLAN, with real guests on each.

The two "hypervisors" share this machine and its libvirtd; each node agent has
its own device-name prefix and creates its VXLAN devices in its own underlay
network namespace, and the two underlays are joined by a veth pair that this
module makes (172.31.x.1/30 and .2/30). Guests ping only each other.
"""

from __future__ import annotations

import os
import random
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import JsonDict
from tests.system.conftest import Cluster, small_spec, wait_until
from tests.system.netlab import leftovers, remove_everything, sh
from tests.system.test_networks import pings, wait_address

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def two_nodes(guest_image: Path) -> Iterator[tuple[Cluster, list[str]]]:
    """A cluster with two node agents whose underlays are namespaces joined by a veth pair."""
    base = "v" + secrets.token_hex(1)
    prefixes = [f"{base}a", f"{base}b"]
    underlays = [f"{base}u1", f"{base}u2"]
    second = random.randint(0, 63) * 4
    addresses = [f"172.31.{second // 4}.1", f"172.31.{second // 4}.2"]
    try:
        sh("ip", "netns", "add", underlays[0])
        sh("ip", "netns", "add", underlays[1])
        sh(
            "ip", "-n", underlays[0], "link", "add", "ul0", "type", "veth",
            "peer", "name", "ul0", "netns", underlays[1],
        )  # fmt: skip
        for netns, address in zip(underlays, addresses, strict=True):
            sh("ip", "-n", netns, "addr", "add", f"{address}/30", "dev", "ul0")
            sh("ip", "-n", netns, "link", "set", "ul0", "up")
            sh("ip", "-n", netns, "link", "set", "lo", "up")

        def node_env(index: int) -> dict[str, str]:
            return {
                "MINICLOUD_NODE_ADDRESS": addresses[index],
                "MINICLOUD_NODE_NETWORK_NAME_PREFIX": prefixes[index],
                "MINICLOUD_NODE_NETWORK_UNDERLAY_NETNS": underlays[index],
                "MINICLOUD_NODE_NETWORK_EGRESS_BRIDGE": f"{base}eg",
            }

        root = Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t"))
        cluster = Cluster.launch(guest_image, root, node_env=node_env(0))
        try:
            cluster.start_node(
                "node2",
                node_name=f"{cluster.node_name}-2",
                data_dir=cluster.root / "node2",
                env={**node_env(1)},
            )
            cluster.wait_node_connected(proc="node2")
            yield cluster, prefixes
        finally:
            remove_everything(cluster)
            cluster.shutdown()
    finally:
        for prefix in (*prefixes, base):
            for name in leftovers(prefix, ()):
                sh("ip", "netns", "del", name, check=False)
                sh("ip", "link", "del", name, check=False)


def test_guests_on_two_nodes_ping_each_other_over_vxlan(
    two_nodes: tuple[Cluster, list[str]],
) -> None:
    """One network spans both nodes: each guest gets its address and reaches the other."""
    cluster, prefixes = two_nodes
    with cluster.client() as api:
        net = api.create_network("wide", "10.213.0.0/24", provide_nat=False)
        made: list[JsonDict] = []
        for name in ("g1", "g2"):
            inst = api.create(small_spec(name, networks=[{"network_uuid": "wide"}]))
            made.append(inst)
        ready = [
            api.wait(i["uuid"], lambda x: x["state"] == "error" or x["agent_state"] == "ready", 300)
            for i in made
        ]
        assert all(i["state"] == "created" for i in ready), ready
        assert ready[0]["node"] != ready[1]["node"], "both guests landed on one node"
        for inst in ready:
            wait_address(api, inst["uuid"], "eth0", inst["interfaces"][0]["ipv4"])
        g1, g2 = ready
        assert pings(api, g1["uuid"], g2["interfaces"][0]["ipv4"])
        assert pings(api, g2["uuid"], g1["interfaces"][0]["ipv4"])

        for inst in ready:
            api.delete(inst["uuid"])
        for inst in ready:
            api.wait(inst["uuid"], lambda x: x["state"] == "deleted", timeout=120)
        api.delete_network(net["uuid"])
    markers = [str(cluster.node_dir), str(cluster.root / "node2")]
    for prefix, marker in zip(prefixes, markers, strict=True):

        def removed(prefix: str = prefix, marker: str = marker) -> bool:
            return not leftovers(prefix, (), marker)

        wait_until(removed, 30, f"{prefix} devices removed")
