"""Networks through the REST gateway with shakenfist-client, on a real guest and data plane.

The cluster is a network lab (``netlab``): private device prefix, egress
bridge and floating pool, all removed afterwards. One guest, created by the
client library on the network "front", serves the interfaces check, the
seed's hot-plug example and the CLI's float and defloat. Traffic goes only
to that guest (through its in-guest agent).
"""

from __future__ import annotations

import ipaddress
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.system.netlab import Lab, open_lab
from tests.system.rest_helpers import client, run_example, sf_client, wait_agent_ready

pytestmark = pytest.mark.system
FRONT = "10.213.0.0/24"


@pytest.fixture(scope="module")
def lab(guest_image: Path) -> Iterator[Lab]:
    """A cluster with a private data plane."""
    with open_lab(guest_image) as made:
        yield made


@pytest.fixture(scope="module")
def guest(lab: Lab) -> dict[str, Any]:
    """The instance "hpvm" on network "front", made with the client library; its agent ready."""
    sf = client(lab.cluster)
    net = sf.allocate_network(FRONT, True, True, "front")
    assert net["state"] == "created", net
    inst = sf.create_instance(
        "hpvm",
        1,
        256,
        [{"network_uuid": "front", "macaddress": None, "model": "virtio"}],
        [{"size": 2, "base": "debian:11", "bus": None, "type": "disk"}],
        None,
        None,
    )
    assert inst["state"] == "created", inst
    found: dict[str, Any] = wait_agent_ready(sf, inst["uuid"], timeout=300)
    return found


def cli(lab: Lab, *args: str) -> str:
    """Run sf-client; it must exit 0. Returns its output."""
    proc = sf_client(lab.cluster, *args)
    assert proc.returncode == 0, (
        f"sf-client {' '.join(args)}: exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    )
    return proc.stdout


def in_guest(sf: Any, uuid: str, command: str) -> str:
    """A command's stdout in the guest, through the agent."""
    op = sf.instance_execute(uuid, command)
    assert op["state"] == "complete" and op["results"]["0"]["return-code"] == 0, op
    return str(op["results"]["0"].get("stdout", ""))


def device_with(sf: Any, uuid: str, mac: str) -> str:
    """The guest's network device with this MAC address ("" while there is none)."""
    for line in in_guest(sf, uuid, "ip -o link").splitlines():
        if mac in line:
            return line.split(":")[1].strip().split("@")[0]
    return ""


def wait_guest_address(sf: Any, uuid: str, mac: str, ipv4: str, timeout: float = 120) -> str:
    """Wait until the device with mac has ipv4 (``ip -4 addr`` in the guest); returns the device."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        device = device_with(sf, uuid, mac)
        seen = in_guest(sf, uuid, f"ip -4 addr show dev {device}") if device else "no device"
        if re.search(rf"inet {re.escape(ipv4)}/", seen):
            return device
        time.sleep(2)
    raise AssertionError(f"the guest's {mac} never got {ipv4}: {seen!r}")


def test_instance_interfaces_match_the_guest_dhcp_address(lab: Lab, guest: dict[str, Any]) -> None:
    """get_instance_interfaces returns the allocated interface; the guest got its ipv4 by DHCP."""
    sf = client(lab.cluster)
    ifaces = sf.get_instance_interfaces(guest["uuid"])
    assert len(ifaces) == 1
    iface = ifaces[0]
    assert iface["state"] == "created" and iface["order"] == 0
    assert iface["network_uuid"] == sf.get_network("front")["uuid"]
    assert ipaddress.IPv4Address(iface["ipv4"]) in ipaddress.IPv4Network(FRONT)
    assert guest["interfaces"] == ifaces
    wait_guest_address(sf, guest["uuid"], iface["macaddr"], iface["ipv4"])


def test_hot_plug_example_gives_the_guest_its_address(lab: Lab, guest: dict[str, Any]) -> None:
    """The seed's hot-plug example plugs 10.0.0.5 into the running guest, which gets it."""
    proc = run_example(
        lab.cluster, "hot_plug.py", "--replace", "...=inst = sf_client.get_instance('hpvm')"
    )
    assert proc.returncode == 0, f"{proc.stdout}\n{proc.stderr}"
    sf = client(lab.cluster)
    hotnet = sf.get_network("hotplug")
    assert (hotnet["netblock"], hotnet["provide_dhcp"], hotnet["provide_nat"]) == (
        "10.0.0.0/24",
        True,
        True,
    )
    plugged = sf.get_instance_interfaces(guest["uuid"])[1]
    assert (plugged["ipv4"], plugged["macaddr"], plugged["order"]) == (
        "10.0.0.5",
        "02:00:00:ea:3a:28",
        1,
    )
    assert plugged["network_uuid"] == hotnet["uuid"] and plugged["state"] == "created"
    device = wait_guest_address(sf, guest["uuid"], "02:00:00:ea:3a:28", "10.0.0.5")
    assert device != device_with(sf, guest["uuid"], guest["interfaces"][0]["macaddr"])
    assert "10.0.0.5/24" in in_guest(sf, guest["uuid"], "ip -4 addr")


def test_cli_network_instance_and_interface_flows(lab: Lab, guest: dict[str, Any]) -> None:
    """sf-client network create/list/show/addresses/instances/events/delete, instance create -n,
    interface show/float/defloat: all exit 0 with what the gateway stores."""
    cli(lab, "network", "create", "clinet", "10.214.0.0/29", "--no-nat")
    shown = json.loads(cli(lab, "--json", "network", "show", "clinet"))
    assert (shown["provide_nat"], shown["provide_dhcp"], shown["state"]) == (False, True, "created")
    assert "clinet" in cli(lab, "network", "list")
    assert "10.214.0.1" in cli(lab, "network", "addresses", "clinet")
    assert "create requested" in cli(lab, "network", "events", "clinet")

    cli(lab, "instance", "create", "clivm", "1", "256", "-d", "2@debian:11", "-n", "clinet")
    inst = json.loads(cli(lab, "--json", "instance", "show", "clivm"))
    assert inst["state"] == "created"
    assert "clivm" in cli(lab, "instance", "list")
    on_net = cli(lab, "network", "instances", "clinet")
    sf = client(lab.cluster)
    iface = sf.get_instance_interfaces(inst["uuid"])[0]
    assert iface["ipv4"] in on_net and inst["uuid"] in on_net

    front = guest["interfaces"][0]["uuid"]
    assert front in cli(lab, "interface", "show", front)
    cli(lab, "interface", "float", front)
    floating = sf.get_interface(front)["floating"]
    assert ipaddress.IPv4Address(floating) in ipaddress.IPv4Network(lab.pool)
    cli(lab, "interface", "defloat", front)
    assert sf.get_interface(front)["floating"] is None

    proc = sf_client(lab.cluster, "network", "delete", "clinet")
    assert proc.returncode != 0 and "Not authorized" in proc.stdout + proc.stderr
    cli(lab, "instance", "delete", "clivm")
    cli(lab, "network", "delete", "clinet")
    assert sf.get_network(shown["uuid"])["state"] == "deleted"
    assert "clinet" not in cli(lab, "network", "list")
