"""Virtual networks on real guests: DHCP, DNS, isolation, NAT, floating addresses, hot plug,
clean-up.

Everything the traffic touches is made here: the node agent's devices carry
a random name prefix, "outside" is a network namespace on an egress bridge
this module creates (holding the floating pool's gateway address, as the
real router would in the bridged set-up), and the floating pool is a random
192.168.240-255.0/24. Pings go only to guests and to that namespace.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import Client, JsonDict
from tests.system.conftest import small_spec, wait_until
from tests.system.netlab import BUSYBOX, Lab, leftovers, open_lab, sh

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def lab(guest_image: Path) -> Iterator[Lab]:
    """A cluster whose node uses a private prefix and egress bridge; an "outside" namespace."""
    with open_lab(guest_image) as made:
        yield made


def run(api: Client, uuid: str, command: str, timeout: float = 120) -> JsonDict:
    """Execute in the guest and wait; returns result "0"."""
    op = api.wait_operation(api.execute(uuid, command)["uuid"], timeout=timeout)
    assert op["state"] == "complete", op
    result: JsonDict = op["results"]["0"]
    return result


def ready(api: Client, name: str, networks: list[JsonDict]) -> JsonDict:
    """Create a 256 MiB guest on networks (wait_ready waits for its agent)."""
    return api.create(small_spec(name, networks=networks))


def wait_ready(api: Client, uuid: str) -> JsonDict:
    """Wait until the guest's agent is ready."""
    inst = api.wait(
        uuid, lambda i: i["state"] == "error" or i["agent_state"] == "ready", timeout=300
    )
    assert inst["state"] == "created", inst
    return inst


def guest_address(api: Client, uuid: str, device: str) -> str:
    """The IPv4 address on a guest's device, as the guest sees it ("" if none)."""
    out = run(api, uuid, f"ip -4 -o addr show dev {device}")["stdout"]
    found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
    return found.group(1) if found else ""


def wait_address(api: Client, uuid: str, device: str, expected: str, timeout: float = 90) -> None:
    """Wait until DHCP gave the guest's device exactly the expected address."""
    deadline = time.monotonic() + timeout
    seen = ""
    while time.monotonic() < deadline:
        seen = guest_address(api, uuid, device)
        if seen == expected:
            return
        time.sleep(2)
    raise AssertionError(f"{device} of {uuid} has {seen!r}, not {expected!r}")


def pings(api: Client, uuid: str, address: str) -> bool:
    """Whether the guest gets an answer from address (which this module made)."""
    result = run(api, uuid, f"{BUSYBOX} ping -c 3 -W 2 {address}")
    return bool(result["return-code"] == 0)


@pytest.fixture(scope="module")
def guests(lab: Lab) -> Iterator[dict[str, JsonDict]]:
    """Networks red (with NAT and DNS) and blue; guests r1, r2 on red and b1 on blue."""
    with lab.cluster.client() as api:
        api.create_network("red", "10.211.0.0/24", provide_dns=True)
        api.create_network("blue", "10.212.0.0/29", provide_nat=False)
        # r2 asks for its address first: r1's random one could otherwise be it.
        r2 = ready(api, "r2", [{"network_uuid": "red", "address": "10.211.0.20"}])
        made = {
            "r1": ready(api, "r1", [{"network_uuid": "red"}]),
            "r2": r2,
            "b1": ready(api, "b1", [{"network_uuid": "blue"}]),
        }
        yield {name: wait_ready(api, inst["uuid"]) for name, inst in made.items()}


def test_dhcp_gives_each_guest_exactly_its_allocated_address(
    lab: Lab, guests: dict[str, JsonDict]
) -> None:
    """Each guest's eth0 gets by DHCP the address the control plane allocated."""
    with lab.cluster.client() as api:
        for inst in guests.values():
            iface = inst["interfaces"][0]
            wait_address(api, inst["uuid"], "eth0", iface["ipv4"])
            mac = run(api, inst["uuid"], "cat /sys/class/net/eth0/address")["stdout"].strip()
            assert mac == iface["macaddr"]
        assert guests["r2"]["interfaces"][0]["ipv4"] == "10.211.0.20"


def test_a_guest_resolves_another_guests_name_on_a_network_with_dns(
    lab: Lab, guests: dict[str, JsonDict]
) -> None:
    """r1 learns red's DNS server by DHCP and resolves r2.NAMESPACE.minicloud to r2's address."""
    with lab.cluster.client() as api:
        r1, r2 = guests["r1"], guests["r2"]
        wait_address(api, r1["uuid"], "eth0", r1["interfaces"][0]["ipv4"])
        resolv = run(api, r1["uuid"], "cat /etc/resolv.conf")["stdout"]
        assert "nameserver 10.211.0.1" in resolv, resolv
        name = f"r2.{r2['namespace']}.minicloud"
        lookup = f"python3 -c \"import socket; print(socket.gethostbyname('{name}'))\""
        assert run(api, r1["uuid"], lookup)["stdout"].strip() == "10.211.0.20"
        # Nothing is forwarded: a name outside the network's domain is not answered.
        outside = run(api, r1["uuid"], f"{BUSYBOX} nslookup example.com 10.211.0.1")
        assert outside["return-code"] != 0, outside


def test_guests_on_one_network_ping_and_networks_are_isolated(
    lab: Lab, guests: dict[str, JsonDict]
) -> None:
    """r1 and r2 reach each other; neither reaches b1 on another network."""
    with lab.cluster.client() as api:
        r1, r2, b1 = (guests[n] for n in ("r1", "r2", "b1"))
        for inst in (r1, r2, b1):
            wait_address(api, inst["uuid"], "eth0", inst["interfaces"][0]["ipv4"])
        assert pings(api, r1["uuid"], r2["interfaces"][0]["ipv4"])
        assert pings(api, r2["uuid"], r1["interfaces"][0]["ipv4"])
        assert not pings(api, r1["uuid"], b1["interfaces"][0]["ipv4"])
        assert not pings(api, b1["uuid"], r1["interfaces"][0]["ipv4"])


def test_a_guest_reaches_outside_through_nat(lab: Lab, guests: dict[str, JsonDict]) -> None:
    """r1 pings the "outside" namespace, which sees it as the network's egress address."""
    with lab.cluster.client() as api:
        r1 = guests["r1"]
        wait_address(api, r1["uuid"], "eth0", r1["interfaces"][0]["ipv4"])
        assert pings(api, r1["uuid"], lab.outside_address)
        # A network without NAT has no way out.
        b1 = guests["b1"]
        assert not pings(api, b1["uuid"], lab.outside_address)


def test_a_floated_interface_is_reachable_from_outside(
    lab: Lab, guests: dict[str, JsonDict]
) -> None:
    """Outside reaches r2 at its floating address; after defloat it does not."""
    with lab.cluster.client() as api:
        iface = guests["r2"]["interfaces"][0]
        floating = api.float_interface(iface["uuid"])["floating"]
        assert floating.startswith(lab.pool.rsplit(".", 2)[0])

        def answers() -> bool:
            ping = ["ip", "netns", "exec", lab.outside, "busybox", "ping", "-c", "1", "-W", "1"]
            return sh(*ping, floating, check=False).returncode == 0

        wait_until(answers, 30, f"outside to reach {floating}", poll=1)
        api.defloat_interface(iface["uuid"])
        wait_until(lambda: not answers(), 30, f"{floating} to stop answering", poll=1)


def test_a_hot_plugged_interface_appears_and_gets_its_address(
    lab: Lab, guests: dict[str, JsonDict]
) -> None:
    """An interface on blue plugged into r1 shows up as eth1 with its address; b1 answers."""
    with lab.cluster.client() as api:
        r1 = guests["r1"]
        iface = api.attach_interface(r1["uuid"], {"network_uuid": "blue"})
        assert iface["state"] == "created" and iface["order"] == 1
        wait_address(api, r1["uuid"], "eth1", iface["ipv4"], timeout=120)
        assert pings(api, r1["uuid"], guests["b1"]["interfaces"][0]["ipv4"])


def test_deleting_instances_and_networks_leaves_nothing_behind(
    lab: Lab, guests: dict[str, JsonDict]
) -> None:
    """After deleting the guests and networks no bridge, veth, namespace or dnsmasq remains."""
    with lab.cluster.client() as api:
        for inst in guests.values():
            api.delete(inst["uuid"])
        for inst in guests.values():
            api.wait(inst["uuid"], lambda i: i["state"] == "deleted", timeout=120)
        for name in ("red", "blue"):
            assert api.delete_network(name)["state"] == "deleted"
    keep = (lab.bridge, lab.outside, f"{lab.prefix}ox")
    marker = str(lab.cluster.node_dir)
    wait_until(lambda: not leftovers(lab.prefix, keep, marker), 30, "the data plane to be removed")
