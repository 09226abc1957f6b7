"""Every Python example of the seed, run unmodified with shakenfist-client against the gateway.

One cluster for the module. The soft-reboot example's instance ("example") is
reused by the examples that need an existing instance; the examples that
create their own "example" run after it is deleted. The hot-plug example needs
a data plane of its own and runs in ``test_rest_networks.py``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.conftest import Cluster
from tests.system.rest_helpers import client, run_example, wait_agent_ready

pytestmark = pytest.mark.system
ROOT = Path(__file__).resolve().parents[2]


def ok(proc: Any) -> str:
    """The output of a process that must have exited 0."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return str(proc.stdout)


def delete_and_wait(sf: Any, uuid: str) -> None:
    sf.delete_instance(uuid)
    assert sf.get_instance(uuid)["state"] == "deleted"


@pytest.fixture(scope="module")
def example(cluster: Cluster) -> Iterator[dict[str, Any]]:
    """The soft-reboot example, run once: its instance stays for the other examples."""
    proc = run_example(cluster, "soft_reboot.py", "--max-sleep", "30")
    out = ok(proc)
    sf = client(cluster)
    inst = sf.get_instance("example")
    yield {"out": out, "uuid": inst["uuid"], "sf": sf}


def test_create_then_delete(cluster: Cluster) -> None:
    """create_instance then delete_instance: the instance ends deleted, still readable by UUID."""
    ok(run_example(cluster, "create_delete.py", "--max-sleep", "5"))
    sf = client(cluster)
    deleted = [i for i in sf.get_instances(all=True) if i["name"] == "example"]
    assert [i["state"] for i in deleted] == ["deleted"]
    assert sf.get_instance(deleted[0]["uuid"])["state"] == "deleted"


def test_soft_reboot_is_detected_through_agent_boot_time(example: dict[str, Any]) -> None:
    """The soft-reboot example sees the agent's boot time change."""
    out = example["out"]
    assert "Instance is created" in out
    assert "Instance booted at" in out
    assert "Boot time changed from" in out, out


def test_list_instances(cluster: Cluster, example: dict[str, Any]) -> None:
    """get_instances prints every visible instance as JSON."""
    listed = json.loads(ok(run_example(cluster, "list_instances.py")))
    assert example["uuid"] in [i["uuid"] for i in listed]
    assert all(i["state"] != "deleted" for i in listed)


@pytest.mark.parametrize("by", ["uuid", "name"])
def test_get_instance_by_uuid_and_by_name(
    cluster: Cluster, example: dict[str, Any], by: str
) -> None:
    """get_instance works with a UUID and with a name."""
    ref = example["uuid"] if by == "uuid" else "example"
    placeholder = "317e9b70-8e26-46af-a1c4-76931c0da5a9"
    got = json.loads(
        ok(run_example(cluster, "get_instance.py", "--replace", f"{placeholder}={ref}"))
    )
    assert got["uuid"] == example["uuid"] and got["state"] == "created"
    assert got["power_state"] == "on" and got["side_channels"] == ["sf-agent", "sf-agent2"]


def test_events(cluster: Cluster, example: dict[str, Any]) -> None:
    """get_instance_events prints the events newest first, including the detected reboot."""
    placeholder = "c0d52a77-0f8a-4f19-bec7-0c05efb03cb4"
    events = json.loads(
        ok(run_example(cluster, "events.py", "--replace", f"{placeholder}={example['uuid']}"))
    )
    assert events and {"type", "timestamp", "fqdn", "message", "duration", "extra"} <= set(
        events[0]
    )
    stamps = [e["timestamp"] for e in events]
    assert stamps == sorted(stamps, reverse=True)
    assert any(e["message"] == "reboot detected" for e in events)


def test_execute(cluster: Cluster, example: dict[str, Any]) -> None:
    """instance_execute returns the complete operation with the command's output."""
    wait_agent_ready(example["sf"], example["uuid"])
    op = json.loads(
        ok(run_example(cluster, "execute.py", "--replace", f"...uuid...={example['uuid']}"))
    )
    assert op["state"] == "complete", op
    assert op["commands"] == [
        {"block-for-result": True, "command": "execute", "commandline": "cat /etc/os-release"}
    ]
    assert op["results"]["0"]["return-code"] == 0
    assert "Debian" in op["results"]["0"]["stdout"]


def test_client_await_agent_helpers(example: dict[str, Any]) -> None:
    """The client's await_agent_command and await_agent_fetch work (they test for sf-agent2)."""
    sf = example["sf"]
    assert "sf-agent2" in sf.get_instance(example["uuid"])["side_channels"]
    code, out = sf.await_agent_command(example["uuid"], "cat /etc/hostname")
    assert code == 0 and out.strip()
    assert sf.await_agent_fetch(example["uuid"], "/etc/hostname") == out


def test_put_a_file_via_a_blob_then_recycle_it(
    cluster: Cluster, example: dict[str, Any], tmp_path: Path
) -> None:
    """The put example uploads README.md; run again, it reuses the blob found by sha512."""
    shutil.copy(ROOT / "README.md", tmp_path / "README.md")
    ref = f"...instance_ref...={example['uuid']}"
    first = ok(run_example(cluster, "put_blob.py", "--replace", ref, cwd=tmp_path))
    assert "Created artifact" in first and "Recycling existing blob" not in first
    second = ok(run_example(cluster, "put_blob.py", "--replace", ref, cwd=tmp_path))
    assert "Recycling existing blob" in second, second
    digest = hashlib.sha512((ROOT / "README.md").read_bytes()).hexdigest()
    op = example["sf"].instance_execute(example["uuid"], "sha512sum /tmp/README.md")
    assert op["results"]["0"]["stdout"].split()[0] == digest


def test_get_a_file_via_a_blob(cluster: Cluster, example: dict[str, Any]) -> None:
    """The get example copies /tmp/README.md out of the guest through a blob."""
    target = Path("/tmp/README.md")
    target.unlink(missing_ok=True)
    ok(run_example(cluster, "get_blob.py", "--replace", f"...instance_ref...={example['uuid']}"))
    assert target.read_bytes() == (ROOT / "README.md").read_bytes()
    target.unlink()


def test_agent_operations_all(cluster: Cluster, example: dict[str, Any]) -> None:
    """get_instance_agentoperations(all=True) lists the completed put and execute operations."""
    ops = json.loads(
        ok(run_example(cluster, "agentops_all.py", "--replace", f"...uuid...={example['uuid']}"))
    )
    kinds = [op["commands"][0]["command"] for op in ops]
    assert "put-blob" in kinds and "execute" in kinds and "get-file" in kinds
    put = next(op for op in ops if op["commands"][0]["command"] == "put-blob")
    assert put["commands"][1]["command"] == "chmod" and put["state"] == "complete"
    assert set(put["results"]) == {"0", "1"}


def test_pause_and_unpause(cluster: Cluster, example: dict[str, Any]) -> None:
    """The pause example pauses then unpauses the instance named in it."""
    ok(run_example(cluster, "pause_unpause.py", "--replace", "'foo'='example'", "--max-sleep", "3"))
    sf = example["sf"]
    assert sf.get_instance("example")["power_state"] == "on"
    messages = [e["message"] for e in sf.get_instance_events(example["uuid"], limit=20)]
    assert "pause requested" in messages and "unpause requested" in messages


def test_metadata_set_get_delete(cluster: Cluster, example: dict[str, Any]) -> None:
    """Metadata set, get and delete through the examples (needs the MetadataService)."""
    uuid = example["uuid"]
    ok(run_example(cluster, "metadata_set.py", "--set", f"instance_uuid={uuid}"))
    got = json.loads(ok(run_example(cluster, "metadata_get.py", "--set", f"instance_uuid={uuid}")))
    assert got.get("foo") == "bar"
    ok(run_example(cluster, "metadata_delete.py", "--set", f"instance_uuid={uuid}"))
    got = json.loads(ok(run_example(cluster, "metadata_get.py", "--set", f"instance_uuid={uuid}")))
    assert "foo" not in got


def test_screenshot(cluster: Cluster, example: dict[str, Any], tmp_path: Path) -> None:
    """The screenshot example writes a PNG of the instance's display."""
    target = tmp_path / "shot.png"
    ok(
        run_example(
            cluster,
            "screenshot.py",
            "--set",
            f"destination={target}",
            "--set",
            f"instance_ref={example['uuid']}",
        )
    )
    assert target.read_bytes().startswith(b"\x89PNG")


def test_vdi_console_helper(example: dict[str, Any]) -> None:
    """The VDI example's helper call returns a virt-viewer file for the SPICE console.

    (The example then runs remote-viewer, which a headless machine cannot.)
    """
    inst = example["sf"].get_instance(example["uuid"])
    vv = example["sf"].get_vdi_console_helper(example["uuid"])
    assert vv.startswith("[virt-viewer]")
    assert "type=spice" in vv and f"port={inst['vdi_port']}" in vv


def test_power_off_then_on(cluster: Cluster, example: dict[str, Any]) -> None:
    """The power example creates its own instance, powers it off, then on."""
    delete_and_wait(example["sf"], example["uuid"])
    out = ok(run_example(cluster, "power_off_on.py", "--max-sleep", "3"))
    assert "Instance is created" in out and "Waiting for the instance to power off" in out
    assert out.strip().endswith("Done")
    sf = client(cluster)
    inst = sf.get_instance("example")
    assert inst["power_state"] == "on"
    delete_and_wait(sf, inst["uuid"])


def test_interfaces_example_finds_no_interfaces_until_networks_exist(cluster: Cluster) -> None:
    """The interfaces example gets as far as listing interfaces; its instance has none.

    The example creates its instance without networks, so its ``[0]`` fails
    with IndexError (``test_rest_networks.py`` checks an instance with one).
    """
    proc = run_example(cluster, "interfaces.py", "--max-sleep", "3")
    assert "Instance is created" in proc.stdout, proc.stderr
    assert proc.returncode == 1 and "IndexError" in proc.stderr
    sf = client(cluster)
    inst = sf.get_instance("example")
    assert sf.get_instance_interfaces(inst["uuid"]) == []
    delete_and_wait(sf, inst["uuid"])
