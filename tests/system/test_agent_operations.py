"""Agent operations on real guests: the in-guest agent over virtio-serial, through gRPC."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from client.api import Client, JsonDict
from tests.system.conftest import Cluster, small_spec, wait_until

pytestmark = pytest.mark.system


def ready_instance(api: Client, name: str) -> JsonDict:
    """Create an instance with the sf-agent channel and wait for its agent to be ready."""
    inst = api.create(small_spec(name))
    return api.wait(
        inst["uuid"], lambda i: i["state"] == "error" or i["agent_state"] == "ready", timeout=180
    )


def run(api: Client, uuid: str, command: str) -> JsonDict:
    """Execute and wait; returns result "0"."""
    op = api.wait_operation(api.execute(uuid, command)["uuid"], timeout=120)
    assert op["state"] == "complete", op
    result: JsonDict = op["results"]["0"]
    return result


def test_execute_put_get_and_streaming(cluster: Cluster, tmp_path: Path) -> None:
    """Commands run in the guest; a 10 MiB file goes in and comes back identical."""
    with cluster.client() as api:
        inst = ready_instance(api, "agent")
        uuid = inst["uuid"]
        assert inst["agent_state"] == "ready", cluster.logs()
        assert inst["agent_system_boot_time"] > 0
        release = run(api, uuid, "cat /etc/os-release")
        assert release["return-code"] == 0 and "Debian" in release["stdout"]
        assert run(api, uuid, "exit 3")["return-code"] == 3
        assert run(api, uuid, "no-such-command")["return-code"] == 127
        chunks: list[tuple[str, bytes]] = []
        final = api.execute_stream(
            uuid, "echo one; sleep 1; echo two >&2", lambda s, d: chunks.append((s, d))
        )
        assert final["state"] == "complete"
        assert (
            b"".join(d for s, d in chunks if s == "stdout"),
            b"".join(d for s, d in chunks if s == "stderr"),
        ) == (b"one\n", b"two\n")

        data = os.urandom(10 * 1024 * 1024)
        blob = api.upload_blob(
            iter([data[i : i + (1 << 20)] for i in range(0, len(data), 1 << 20)])
        )
        put = api.wait_operation(
            api.put_blob(uuid, blob["uuid"], "/root/random.bin", 0o100640)["uuid"]
        )
        assert put["state"] == "complete", put
        assert run(api, uuid, "stat -c %a /root/random.bin")["stdout"].strip() == "640"
        got = api.wait_operation(api.get_file(uuid, "/root/random.bin")["uuid"])
        assert got["state"] == "complete", got
        back = b"".join(api.download_blob(got["results"]["0"]["content_blob"]))
        assert hashlib.sha512(back).hexdigest() == hashlib.sha512(data).hexdigest()

        missing = api.wait_operation(api.get_file(uuid, "/no/such/path")["uuid"])
        assert missing["state"] == "error" and "/no/such/path" in missing["error_message"]


def test_soft_reboot_is_detected_and_the_link_returns(cluster: Cluster) -> None:
    """A soft reboot changes the agent's boot time, adds 'reboot detected', and ops work after."""
    with cluster.client() as api:
        inst = ready_instance(api, "rebooter")
        uuid, boot = inst["uuid"], inst["agent_system_boot_time"]
        api.power(uuid, "soft-reboot")
        after = api.wait(
            uuid,
            lambda i: i["agent_state"] == "ready" and i["agent_system_boot_time"] != boot,
            timeout=120,
        )
        assert after["agent_system_boot_time"] > boot
        assert any(e["message"] == "reboot detected" for e in api.events(uuid))
        assert run(api, uuid, "echo back")["stdout"] == "back\n"


def test_agent_killed_in_guest_fails_cleanly_and_recovers(cluster: Cluster) -> None:
    """Killing the agent process inside the guest fails the running op; the agent comes back."""
    with cluster.client() as api:
        uuid = ready_instance(api, "killer")["uuid"]
        op = api.execute(uuid, "kill -9 $(pgrep -f guestagent.serve)")
        done = api.wait_operation(op["uuid"], timeout=120)
        assert done["state"] == "error" and done["error_message"]
        wait_until(lambda: api.get(uuid)["agent_state"] == "ready", 120, "the agent to come back")
        assert run(api, uuid, "echo alive")["stdout"] == "alive\n"


def test_instance_boots_from_an_uploaded_artifact(cluster: Cluster) -> None:
    """An image uploaded as an artifact is fetched by the node from the control plane and boots."""
    with cluster.client() as api:
        with cluster.image.open("rb") as src:
            art = api.upload_artifact("guest", iter(lambda: src.read(1 << 20), b""))
        assert art["versions"][-1]["blob_uuid"] == art["blob_uuid"]
        api.label_blob("golden", art["blob_uuid"])
        for name, base in (
            ("fromupload", "sf://upload/system/guest"),
            ("fromlabel", "label:golden"),
        ):
            inst = api.create(small_spec(name, disks=[{"size_gb": 2, "base": base}]))
            assert inst["spec"]["disks"][0]["base"] == f"sf://blob/{art['blob_uuid']}"
            ready = api.wait(
                inst["uuid"],
                lambda i: i["state"] == "error" or i["agent_state"] == "ready",
                timeout=180,
            )
            assert ready["agent_state"] == "ready", ready
            api.delete(inst["uuid"])


def test_operations_queued_while_booting_run_once_ready(cluster: Cluster) -> None:
    """An execute queued right after create waits for the booting guest's agent, then runs."""
    with cluster.client() as api:
        inst = api.create(small_spec("early"))
        op = api.execute(inst["uuid"], "echo early bird")
        assert op["state"] == "queued"
        assert api.get(inst["uuid"])["agent_state"] != "ready"
        done = api.wait_operation(op["uuid"], timeout=180)
        assert done["state"] == "complete", done
        assert done["results"]["0"]["stdout"] == "early bird\n"
