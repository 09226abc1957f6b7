"""The instance lifecycle through real processes, libvirtd and QEMU guests."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from tests.system.conftest import (
    BANNER,
    Cluster,
    running,
    settled,
    small_spec,
    virsh,
    wait_until,
)

pytestmark = pytest.mark.system

# A node away for longer than this is missing (60 s by default; short here).
MISSING_AFTER = 4


@pytest.fixture(scope="module")
def cluster(guest_image: Path) -> Iterator[Cluster]:
    """This module's cluster: a node is missing after MISSING_AFTER seconds away."""
    c = Cluster.launch(
        guest_image,
        Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t")),
        controlplane_env={"MINICLOUD_NODE_MISSING_AFTER": str(MISSING_AFTER)},
    )
    try:
        yield c
    finally:
        c.shutdown()


def domstate(uuid: str) -> str:
    """What libvirt says the domain is doing."""
    return virsh("domstate", uuid).stdout.strip()


def test_create_boots_guest_with_banner_on_console(cluster: Cluster) -> None:
    """A created instance runs a real guest whose console shows its boot banner."""
    with cluster.client() as api:
        inst = api.create(small_spec("boot"))
        assert inst["state"] == "creating"
        done = api.wait(inst["uuid"], settled, timeout=180)
        assert running(done), cluster.logs()
        assert domstate(inst["uuid"]) == "running"
        cluster.wait_banner(inst["uuid"])
        disk = cluster.node_dir / "instances" / inst["uuid"] / "disk0.qcow2"
        info = json.loads(
            subprocess.run(
                ["qemu-img", "info", "-U", "--output=json", str(disk)],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
        )
        assert info["format"] == "qcow2"
        assert info["virtual-size"] >= 2 * 1024**3
        assert "backing-filename" in info
        messages = [e["message"] for e in api.events(inst["uuid"])]
        assert any("fetching required image" in m.lower() for m in messages) or any(
            "disks ready" in m for m in messages
        )


def test_power_operations_change_power_state_and_log_events(cluster: Cluster) -> None:
    """Power off/on, pause/unpause, soft and hard reboot act on the real guest."""
    with cluster.client() as api:
        inst = api.wait(api.create(small_spec("power"))["uuid"], settled, timeout=180)
        uuid = inst["uuid"]
        cluster.wait_banner(uuid)
        assert api.power(uuid, "off")["power_state"] == "off"
        assert domstate(uuid) == "shut off"
        assert api.power(uuid, "on")["power_state"] == "on"
        cluster.wait_banner(uuid, 2)
        assert api.power(uuid, "pause")["power_state"] == "paused"
        assert domstate(uuid) == "paused"
        assert api.power(uuid, "unpause")["power_state"] == "on"
        assert api.power(uuid, "soft-reboot")["power_state"] == "on"
        cluster.wait_banner(uuid, 3)
        assert api.power(uuid, "hard-reboot")["power_state"] == "on"
        cluster.wait_banner(uuid, 4)
        assert domstate(uuid) == "running"
        audit = [e["message"] for e in api.events(uuid, "audit")]
        for op in ("off", "on", "pause", "unpause", "soft-reboot", "hard-reboot"):
            assert f"{op} requested" in audit
        changes = [e["message"] for e in api.events(uuid, "mutate")]
        assert any("from on to off" in m for m in changes)
        assert any("from on to paused" in m for m in changes)


def test_operation_not_allowed_is_failed_precondition(cluster: Cluster) -> None:
    """Unpausing a running guest is refused with FAILED_PRECONDITION and changes nothing."""
    with cluster.client() as api:
        inst = api.wait(api.create(small_spec("refuse"))["uuid"], settled, timeout=180)
        with pytest.raises(grpc.RpcError) as info:
            api.power(inst["uuid"], "unpause")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert domstate(inst["uuid"]) == "running"


def test_delete_removes_domain_and_files_and_keeps_record(cluster: Cluster) -> None:
    """Delete removes the domain and its disk files; the record stays readable as deleted."""
    with cluster.client() as api:
        inst = api.wait(api.create(small_spec("doomed"))["uuid"], settled, timeout=180)
        uuid = inst["uuid"]
        folder = cluster.node_dir / "instances" / uuid
        assert folder.exists()
        api.delete(uuid)
        gone = api.wait(uuid, lambda i: i["state"] == "deleted", timeout=60)
        assert gone["power_state"] == "off"
        assert virsh("dominfo", uuid).returncode != 0
        assert not folder.exists()
        assert uuid not in [i["uuid"] for i in api.list_instances()]


def test_domain_destroyed_behind_our_back_shows_off(cluster: Cluster) -> None:
    """`virsh destroy` outside the agent shows up as power off with an event."""
    with cluster.client() as api:
        inst = api.wait(api.create(small_spec("victim"))["uuid"], settled, timeout=180)
        uuid = inst["uuid"]
        assert virsh("destroy", uuid).returncode == 0
        api.wait(uuid, lambda i: i["power_state"] in ("off", "crashed"), timeout=10)
        assert any("destroyed" in e["message"] for e in api.events(uuid, "mutate"))


def test_node_agent_killed_guest_keeps_running_and_converges(cluster: Cluster) -> None:
    """Killing the node agent leaves guests running; their power is unknown while the node
    is reconnecting, then missing; on its return, drift is reconciled."""
    with cluster.client() as api:
        inst = api.wait(api.create(small_spec("durable"))["uuid"], settled, timeout=180)
        uuid, node = inst["uuid"], inst["node"]
        cluster.stop("nodeagent", signal.SIGKILL)
        assert domstate(uuid) == "running"
        api.wait(uuid, lambda i: i["power_state"] == "unknown", timeout=10)
        assert api.get_node(node)["state"] in ("reconnecting", "missing")
        wait_until(lambda: api.get_node(node)["state"] == "missing", 3 * MISSING_AFTER, "missing")
        messages = [e["message"] for e in api.events(uuid, limit=50)]
        assert any(f"(node {node} is reconnecting)" in m for m in messages), messages
        virsh("destroy", uuid)  # drift while the agent is away
        cluster.start_node()
        cluster.wait_node_connected(2)
        api.wait(uuid, lambda i: i["power_state"] == "off", timeout=20)
        assert api.get_node(node)["state"] == "created"
        assert api.power(uuid, "on")["power_state"] == "on"
        assert domstate(uuid) == "running"


def test_control_plane_restart_keeps_every_instance(cluster: Cluster) -> None:
    """Restarting the control plane loses nothing and the node reconnects."""
    with cluster.client() as api:
        before = {i["uuid"]: i["state"] for i in api.list_instances()}
        assert before
    cluster.stop("controlplane")
    cluster.start_controlplane()
    with cluster.client() as api:
        wait_until(lambda: _reachable(api), 20, "the control plane to come back")
        after = {i["uuid"]: i["state"] for i in api.list_instances()}
        assert after == before
        cluster.wait_node_connected(3)
        uuid = next(u for u, s in after.items() if s == "created")
        inst = api.get(uuid)
        op = "off" if inst["power_state"] == "on" else "on"
        assert api.power(uuid, op)["power_state"] == ("off" if op == "off" else "on")


def _reachable(api: object) -> bool:
    try:
        api.list_instances()  # type: ignore[attr-defined]
        return True
    except grpc.RpcError:
        return False


def test_missing_base_fails_cleanly(cluster: Cluster) -> None:
    """Missing bases end the instance in error with a message, leaving no domain or files."""
    with cluster.client() as api:
        for name, base in (("nofile", "/nonexistent/disk.qcow2"), ("nourl", "debian:99")):
            inst = api.create(small_spec(name, disks=[{"size_gb": 2, "base": base}]))
            failed = api.wait(inst["uuid"], settled, timeout=60)
            assert failed["state"] == "error"
            assert failed["error_message"]
            assert virsh("dominfo", inst["uuid"]).returncode != 0
            api.delete(inst["uuid"])
            api.wait(inst["uuid"], lambda i: i["state"] == "deleted", timeout=30)
            assert not (cluster.node_dir / "instances" / inst["uuid"]).exists()


def test_banner_constant_matches_image() -> None:
    """The banner the tests wait for is the one the guest image prints."""
    from pathlib import Path

    init = Path(__file__).resolve().parents[2] / "tools" / "guest_image"
    assert any(BANNER in p.read_text(errors="replace") for p in init.iterdir() if p.is_file())
