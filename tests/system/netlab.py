"""A cluster for network system tests, and the "outside" it reaches, all made here.

The node agent's devices carry a random name prefix, "outside" is a network
namespace on an egress bridge made here (holding the floating pool's gateway
address, as the real router would in the bridged set-up), and the floating
pool is a random 192.168.240-255.0/24. Everything is removed afterwards, by
this lab's prefix only.
"""

from __future__ import annotations

import os
import random
import secrets
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from tests.system.conftest import Cluster

BUSYBOX = "/usr/local/bin/busybox"


def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a host command."""
    return subprocess.run(argv, capture_output=True, text=True, check=check)


@dataclass
class Lab:
    """The cluster and the pieces of "outside" this module made."""

    cluster: Cluster
    prefix: str
    bridge: str
    outside: str
    outside_address: str
    pool: str


def leftovers(prefix: str, keep: tuple[str, ...], marker: str = "") -> list[str]:
    """Links and namespaces of this prefix, and dnsmasq processes under marker, still there."""
    links = [
        line.split()[0].split("@")[0]
        for line in sh("ip", "-br", "link").stdout.splitlines()
        if line.startswith(prefix)
    ]
    spaces = [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines()]
    found = [name for name in links + spaces if name.startswith(prefix) and name not in keep]
    if marker:
        found += [
            line
            for line in sh("ps", "-eo", "args").stdout.splitlines()
            if line.startswith("dnsmasq") and marker in line
        ]
    return found


@contextmanager
def open_lab(guest_image: Path) -> Iterator[Lab]:
    """A cluster whose node uses a private prefix and egress bridge; an "outside" namespace."""
    prefix = "s" + secrets.token_hex(1)
    third = random.randint(240, 255)
    pool = f"192.168.{third}.0/24"
    bridge, outside, veth = f"{prefix}egress", f"{prefix}-outside", f"{prefix}ox"
    outside_address = f"192.168.{third}.1"
    made: list[list[str]] = []
    try:
        for argv in (
            ["ip", "link", "add", bridge, "type", "bridge"],
            ["ip", "link", "set", bridge, "up"],
            ["ip", "netns", "add", outside],
            ["ip", "link", "add", veth, "type", "veth", "peer", "name", "out0", "netns", outside],
            ["ip", "link", "set", veth, "master", bridge, "up"],
            ["ip", "-n", outside, "addr", "add", f"{outside_address}/24", "dev", "out0"],
            ["ip", "-n", outside, "link", "set", "out0", "up"],
            ["ip", "-n", outside, "link", "set", "lo", "up"],
        ):
            sh(*argv)
            made.append(argv)
        root = Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t"))
        cluster = Cluster.launch(
            guest_image,
            root,
            controlplane_env={"MINICLOUD_FLOATING_NETBLOCK": pool},
            node_env={
                "MINICLOUD_NODE_NETWORK_NAME_PREFIX": prefix,
                "MINICLOUD_NODE_NETWORK_EGRESS_BRIDGE": bridge,
            },
        )
        try:
            yield Lab(cluster, prefix, bridge, outside, outside_address, pool)
        finally:
            remove_everything(cluster)
            cluster.shutdown()
    finally:
        # Whatever a failed test left behind, by this module's prefix only.
        for name in leftovers(prefix, ()):
            sh("ip", "netns", "del", name, check=False)
            sh("ip", "link", "del", name, check=False)
        sh("ip", "netns", "del", outside, check=False)
        sh("ip", "link", "del", bridge, check=False)


def remove_everything(cluster: Cluster) -> None:
    """Delete every instance, then every network (best effort)."""
    try:
        with cluster.client() as api:
            for inst in api.list_instances():
                api.delete(inst["uuid"])
            for inst in api.list_instances():
                api.wait(inst["uuid"], lambda i: i["state"] == "deleted", timeout=60)
            for net in api.list_networks():
                api.delete_network(net["uuid"], clean=True)
    except Exception:
        pass
