"""The sf-client CLI (shakenfist-client 0.8.3) against the gateway, on one real guest."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.system.conftest import Cluster, wait_until
from tests.system.rest_helpers import client, sf_client, wait_agent_ready

pytestmark = pytest.mark.system


def cli(cluster: Cluster, *args: str) -> str:
    """Run sf-client; it must exit 0. Returns its output."""
    proc = sf_client(cluster, *args)
    assert proc.returncode == 0, (
        f"sf-client {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def state_of(cluster: Cluster, ref: str) -> dict[str, Any]:
    found: dict[str, Any] = json.loads(cli(cluster, "--json", "instance", "show", ref))
    return found


def test_cli_instance_flows(cluster: Cluster, tmp_path: Path) -> None:
    """create, list, show, events, execute, upload, download, power actions, reboot, delete."""
    out = cli(cluster, "instance", "create", "clivm", "1", "256", "-d", "2@debian:11")
    assert "clivm" in out and "created" in out, out
    assert "clivm" in cli(cluster, "instance", "list")
    shown = state_of(cluster, "clivm")
    assert shown["state"] == "created" and shown["name"] == "clivm"
    uuid = shown["uuid"]
    wait_agent_ready(client(cluster), uuid)

    out = cli(cluster, "instance", "execute", "clivm", "echo hello from the guest")
    assert "exit code     : 0" in out and "hello from the guest" in out, out

    source = tmp_path / "payload.bin"
    source.write_bytes(os.urandom(300_000))
    out = cli(cluster, "instance", "upload", "clivm", str(source), "/root/payload.bin")
    assert "Created artifact" in out
    back = tmp_path / "back.bin"
    cli(cluster, "instance", "download", "clivm", "/root/payload.bin", str(back))
    assert back.read_bytes() == source.read_bytes()

    events = cli(cluster, "instance", "events", "clivm", "--limit", "5")
    assert "timestamp" in events and len(events.splitlines()) >= 5
    audit = cli(cluster, "--json", "instance", "events", "clivm", "-t", "audit")
    assert all(e["type"] == "audit" for e in json.loads(audit))

    for command, power in (
        (("poweroff",), "off"),
        (("poweron",), "on"),
        (("pause",), "paused"),
        (("unpause",), "on"),
        (("reboot",), "on"),
        (("reboot", "--hard"), "on"),
    ):
        cli(cluster, "instance", *command, "clivm")
        assert state_of(cluster, "clivm")["power_state"] == power, command

    # The console since the last (hard) reboot: the guest prints its banner once it is up.
    wait_until(
        lambda: "minicloud-guest" in cli(cluster, "instance", "consoledata", "clivm"),
        120,
        "the rebooted guest's banner in sf-client's consoledata",
    )

    cli(cluster, "instance", "delete", "clivm")
    assert client(cluster).get_instance(uuid)["state"] == "deleted"
    assert "clivm" not in cli(cluster, "instance", "list")
