"""Moving a real guest between two node agents sharing this host's libvirtd.

The second node agent has its own name and data folder, so the guest's disks
really travel: flattened on the first node, through the blob store, rebuilt on
the second. A file written inside the guest before the move is read back after.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import Client, JsonDict
from tests.system.conftest import Cluster, small_spec

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def two_nodes(guest_image: Path) -> Iterator[tuple[Cluster, dict[str, Path]]]:
    """A cluster with a second node agent; node name -> its data folder."""
    root = Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t"))
    cluster = Cluster.launch(guest_image, root)
    try:
        second = f"{cluster.node_name}-2"
        cluster.start_node("node2", node_name=second, data_dir=cluster.root / "node2")
        cluster.wait_node_connected(proc="node2")
        yield cluster, {cluster.node_name: cluster.node_dir, second: cluster.root / "node2"}
    finally:
        cluster.shutdown()


def agent_ready(inst: JsonDict) -> bool:
    return bool(inst["state"] == "error" or inst["agent_state"] == "ready")


def run(api: Client, uuid: str, command: str) -> JsonDict:
    """Execute in the guest and wait; returns result "0"."""
    op = api.wait_operation(api.execute(uuid, command)["uuid"], timeout=120)
    assert op["state"] == "complete", op
    result: JsonDict = op["results"]["0"]
    return result


def test_a_stopped_guest_moves_and_keeps_its_files(
    two_nodes: tuple[Cluster, dict[str, Path]],
) -> None:
    """Write a file, stop, move to the other node, power on there: it boots with the file."""
    cluster, folders = two_nodes
    with cluster.client() as api:
        inst = api.wait(api.create(small_spec("mover"))["uuid"], agent_ready, timeout=180)
        assert inst["state"] == "created", cluster.logs()
        uuid, source = inst["uuid"], inst["node"]
        (target,) = set(folders) - {source}
        assert run(api, uuid, "echo moved-intact > /root/note && sync")["return-code"] == 0
        api.power(uuid, "off")

        moved = api.move(uuid, target)

        assert (moved["node"], moved["power_state"]) == (target, "off"), cluster.logs()
        assert moved["spec"]["disks"][0]["base"].startswith("sf://blob/")
        assert not (folders[source] / "instances" / uuid).exists()
        assert (folders[target] / "instances" / uuid / "disk0.qcow2").exists()
        api.power(uuid, "on")
        booted = inst["agent_system_boot_time"]
        back = api.wait(
            uuid,
            lambda i: agent_ready(i) and i["agent_system_boot_time"] not in (0, booted),
            timeout=180,
        )
        assert (back["node"], back["agent_state"]) == (target, "ready"), cluster.logs()
        assert run(api, uuid, "cat /root/note")["stdout"] == "moved-intact\n"
        messages = [e["message"] for e in api.events(uuid, limit=200)]
        assert f"moving to node {target}" in messages
        assert f"moved from node {source}" in messages
        api.delete(uuid)
        api.wait(uuid, lambda i: i["state"] == "deleted", timeout=120)


def test_draining_a_node_moves_its_stopped_guest_which_boots_on_the_other(
    two_nodes: tuple[Cluster, dict[str, Path]],
) -> None:
    """Drain the node of a stopped guest: it is moved, boots there; the node stays disabled."""
    cluster, folders = two_nodes
    with cluster.client() as api:
        inst = api.wait(api.create(small_spec("drained"))["uuid"], agent_ready, timeout=180)
        assert inst["state"] == "created", cluster.logs()
        uuid, source = inst["uuid"], inst["node"]
        (target,) = set(folders) - {source}
        api.power(uuid, "off")

        report = api.drain_node(source)

        assert report["node"]["state"] == "disabled", (report, cluster.logs())
        assert "blocking" not in report or not report["blocking"], report
        assert api.get(uuid)["node"] == target
        assert "drained" in [e["message"] for e in api.node_events(source)]
        api.power(uuid, "on")
        booted = inst["agent_system_boot_time"]
        back = api.wait(
            uuid,
            lambda i: agent_ready(i) and i["agent_system_boot_time"] not in (0, booted),
            timeout=180,
        )
        assert (back["node"], back["agent_state"]) == (target, "ready"), cluster.logs()
        api.node_action("enable", source)
        assert api.get_node(source)["state"] == "created"
        api.delete(uuid)
        api.wait(uuid, lambda i: i["state"] == "deleted", timeout=120)
