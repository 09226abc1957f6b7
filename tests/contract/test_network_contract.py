"""The network-driver contract, run against FakeNetworkDriver and LinuxNetworkDriver.

See nodeagent/network/protocol.py for the semantics checked here. The Linux
half needs root, iproute2, iptables, dnsmasq and busybox (tools/install.sh);
it fails rather than skips under CI. Its VXLAN underlay is a pair of
namespaces the test makes, guests and the "outside" are namespaces on the
bridges, and no packet is ever sent anywhere else.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import tempfile
import uuid as uuidlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from nodeagent.network.claims import ClaimRefused
from nodeagent.network.fake import FakeNetworkDriver
from nodeagent.network.linux import LinuxNetworkDriver, LinuxNetworkSettings
from nodeagent.network.naming import name_pattern
from nodeagent.network.protocol import (
    Floating,
    Lease,
    NetworkConfig,
    NetworkDriver,
    NetworkError,
)
from nodeagent.network.validation import dhcp_hostname
from tests.contract.netlab import Lab, sh, unavailable

UNDERLAY_ONE, UNDERLAY_TWO = "172.31.255.1", "172.31.255.2"


@dataclass(frozen=True)
class Observed:
    """What a node carries for one network, as seen from outside the driver."""

    bridge: bool
    mtu: int
    peers: frozenset[str]
    services: bool
    gateway: str
    dhcp: bool
    leases: frozenset[tuple[str, str, str]]
    egress: str
    floating: frozenset[tuple[str, str]]
    # DNS names served (address, NAME.DOMAIN); empty without DNS.
    names: frozenset[tuple[str, str]] = frozenset()


def expected(config: NetworkConfig) -> Observed:
    """What the contract says a node carries after ensure(config)."""
    services = config.services_here
    dhcp = services and config.provide_dhcp
    # With DNS, names are only in DNS: dnsmasq would keep serving a lease's name.
    dns = services and config.provide_dns
    egress = config.egress_address if services and config.provide_nat else ""
    prefix = config.netblock.split("/")[1]
    return Observed(
        bridge=True,
        mtu=config.mtu,
        peers=frozenset(config.peers),
        services=services,
        gateway=f"{config.gateway}/{prefix}" if services else "",
        dhcp=dhcp,
        leases=frozenset(
            (lease.mac.lower(), lease.address, "" if dns else dhcp_hostname(lease.hostname))
            for lease in (config.leases if dhcp else ())
        ),
        egress=egress,
        floating=frozenset((f.address, f.inner_address) for f in config.floating)
        if egress
        else frozenset(),
        names=frozenset(
            (lease.address, f"{dhcp_hostname(lease.hostname).lower()}.{config.dns_domain}")
            for lease in (config.leases if dns else ())
            if dhcp_hostname(lease.hostname)
        ),
    )


@dataclass
class NetBackend:
    """One network driver under test and a way to look at what it made."""

    kind: str
    driver: NetworkDriver
    lab: Lab | None = None

    def observe(self, network_uuid: str) -> Observed | None:
        """What this node has for the network, or None when it has nothing."""
        if isinstance(self.driver, FakeNetworkDriver):
            config = self.driver.networks.get(network_uuid)
            return None if config is None else expected(config)
        assert isinstance(self.driver, LinuxNetworkDriver)
        return observe_linux(self.driver, network_uuid)


def observe_linux(driver: LinuxNetworkDriver, network_uuid: str) -> Observed | None:
    """Read a network's state from the kernel, dnsmasq and the driver's files."""
    names = driver.names(network_uuid)
    folder = driver.folder(network_uuid)
    bridge = driver.runner.json("ip", "-j", "link", "show", "dev", names.bridge)
    services = Path("/run/netns", names.netns).exists()
    if not bridge and not services and not folder.exists():
        return None
    fdb = driver.runner.json("bridge", "-j", "fdb", "show", "dev", names.vxlan) or []
    peers = frozenset(e["dst"] for e in fdb if e.get("mac") == "00:00:00:00:00:00")
    gateway = egress = ""
    floating: set[tuple[str, str]] = set()
    if services:
        gateway = ",".join(addresses(names.netns, "gw0"))
        egress = ",".join(a for a in addresses(names.netns, "eg0") if not a.endswith("/32"))
        for line in sh("iptables", "-w", "-t", "nat", "-S", netns=names.netns).stdout.splitlines():
            if "-j DNAT" in line:
                words = line.split()
                floating.add((words[3].removesuffix("/32"), words[-1]))
    pids = [
        p
        for p in Path("/proc").iterdir()
        if p.name.isdigit() and f"{folder}/dnsmasq.pid" in _cmdline(p)
    ]
    leases: set[tuple[str, str, str]] = set()
    served: set[tuple[str, str]] = set()
    argv = _cmdline(pids[0]) if pids else ""
    if pids and "--dhcp-range" in argv:
        for line in (folder / "dhcp-hosts").read_text().splitlines():
            mac, address, *rest = line.split(",")
            leases.add((mac, address, rest[0] if rest else ""))
    if pids and "--addn-hosts" in argv:
        for line in (folder / "dns-hosts").read_text().splitlines():
            address, fqdn, *_ = line.split()
            served.add((address, fqdn))
    return Observed(
        bridge=bool(bridge),
        mtu=bridge[0]["mtu"] if bridge else 0,
        peers=peers,
        services=services,
        gateway=gateway,
        dhcp=len(pids) == 1 and "--dhcp-range" in argv,
        leases=frozenset(leases),
        egress=egress,
        floating=frozenset(floating),
        names=frozenset(served),
    )


def driver_leftovers(driver: NetworkDriver) -> list[str]:
    """Links, namespaces, dnsmasq processes and files a Linux driver still has."""
    assert isinstance(driver, LinuxNetworkDriver)
    pattern = name_pattern(driver.prefix)
    found = []
    namespaces = ["", driver.settings.underlay_netns] if driver.settings.underlay_netns else [""]
    for netns in namespaces:
        for link in driver.runner.json("ip", "-j", "link", "show", netns=netns) or []:
            if pattern.match(link["ifname"]):
                found.append(f"link {link['ifname']}")
    folder = Path("/run/netns")
    found += [f"netns {p.name}" for p in folder.iterdir() if pattern.match(p.name)]
    data = str(driver.settings.data_dir)
    found += [f"process {p.name}" for p in Path("/proc").iterdir() if data in _cmdline(p)]
    networks = driver.settings.data_dir / "networks"
    found += [f"files {p}" for p in networks.iterdir()] if networks.exists() else []
    return found


def addresses(netns: str, device: str) -> list[str]:
    """IPv4 address/prefix strings on a device inside a namespace."""
    out = sh("ip", "-4", "-o", "addr", "show", "dev", device, netns=netns, check=False).stdout
    return sorted(line.split()[3] for line in out.splitlines())


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return ""


@pytest.fixture
def work_dir() -> Iterator[Path]:
    """A scratch folder dnsmasq (once it drops to nobody) can still read; removed afterwards."""
    path = Path(tempfile.mkdtemp(prefix="mc-net-", dir="/var/tmp"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def lab(work_dir: Path) -> Iterator[Lab]:
    """The network laboratory (Linux half only), cleaned up whatever happens."""
    reason = unavailable()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"the Linux network driver must be testable in CI: {reason}")
        pytest.skip(reason)
    lab = Lab(work_dir)
    try:
        yield lab
    finally:
        lab.cleanup()


CLUSTER = "c0ffee00-contract"


def linux_driver(lab: Lab, underlay_netns: str, address: str, prefix: str) -> LinuxNetworkDriver:
    """A Linux driver whose VXLAN underlay is one of the lab's namespaces."""
    driver = LinuxNetworkDriver(
        LinuxNetworkSettings(
            data_dir=lab.work_dir / prefix,
            underlay_address=address,
            underlay_netns=underlay_netns,
            name_prefix=prefix,
            egress_bridge=f"{lab.prefix}egress",
            claims_path=lab.work_dir / "network-claims.json",
        )
    )
    driver.claim(CLUSTER)
    return driver


async def _linux_backend(lab: Lab) -> AsyncIterator[NetBackend]:
    underlay, _ = lab.underlay_pair(UNDERLAY_ONE, UNDERLAY_TWO)
    driver = linux_driver(lab, underlay, UNDERLAY_ONE, lab.prefix)
    backend = NetBackend(kind="linux", driver=driver, lab=lab)
    try:
        yield backend
    finally:
        for network_uuid in await driver.present():
            await driver.remove(network_uuid)


@pytest.fixture(params=["fake", "linux"])
async def net(request: pytest.FixtureRequest) -> AsyncIterator[NetBackend]:
    """The driver under test: the in-memory fake, then the Linux adapter."""
    if request.param == "fake":
        yield NetBackend(kind="fake", driver=FakeNetworkDriver())
        return
    async for backend in _linux_backend(request.getfixturevalue("lab")):
        yield backend


@pytest.fixture
async def linux_net(lab: Lab) -> AsyncIterator[NetBackend]:
    """The Linux adapter alone: for what only real packets and devices can show."""
    async for backend in _linux_backend(lab):
        yield backend


def new_config(base: str = "10.99.7", **overrides: Any) -> NetworkConfig:
    """A network with services, two leases, a peer, NAT and a floating address."""
    fields: dict[str, object] = {
        "uuid": str(uuidlib.uuid4()),
        "vni": 4000 + int.from_bytes(os.urandom(2), "big"),
        "netblock": f"{base}.0/24",
        "gateway": f"{base}.1",
        "leases": (
            Lease(mac="02:00:00:aa:00:05", address=f"{base}.5", hostname="guest-a"),
            Lease(mac="02:00:00:aa:00:06", address=f"{base}.6", hostname="bad_name!"),
        ),
        "peers": (UNDERLAY_TWO,),
        "egress_address": "192.168.250.5/24",
        "egress_gateway": "192.168.250.1",
        "floating": (Floating(address="192.168.250.100", inner_address=f"{base}.5"),),
    }
    fields.update(overrides)
    return NetworkConfig(**fields)  # type: ignore[arg-type]


def config_for(net: NetBackend, **overrides: Any) -> NetworkConfig:
    """new_config with the lab's netblock and egress addresses on the Linux half."""
    if net.lab is None:
        return new_config(**overrides)
    egress = net.lab.egress_net
    fields: dict[str, Any] = {
        "base": net.lab.netblock(1),
        "egress_address": f"{egress}.5/24",
        "egress_gateway": f"{egress}.1",
    }
    fields.update(overrides)
    base = str(fields["base"])
    if "floating" not in overrides:
        fields["floating"] = (Floating(address=f"{egress}.100", inner_address=f"{base}.5"),)
    return new_config(**fields)


# -- the contract, both halves ---------------------------------------------------------


def test_bridge_names_are_short_stable_and_distinct() -> None:
    """Bridge names fit Linux's 15 characters, do not change, and differ per network and prefix."""
    fake, other = FakeNetworkDriver(), FakeNetworkDriver(name_prefix="n2")
    uuids = [str(uuidlib.uuid4()) for _ in range(50)]
    names = {fake.bridge_name(u) for u in uuids}
    assert len(names) == 50 and all(len(n) <= 15 for n in names)
    assert fake.bridge_name(uuids[0]) == fake.bridge_name(uuids[0])
    assert fake.bridge_name(uuids[0]).startswith("mcb-")
    assert other.bridge_name(uuids[0]) != fake.bridge_name(uuids[0])


async def test_ensure_carries_the_network_and_is_idempotent(net: NetBackend) -> None:
    """After ensure the node carries exactly the config; ensuring again changes nothing."""
    config = config_for(net)
    await net.driver.ensure(config)
    first = net.observe(config.uuid)
    assert first == expected(config)
    assert config.uuid in await net.driver.present()
    await net.driver.ensure(config)
    assert net.observe(config.uuid) == first


async def test_a_changed_config_converges(net: NetBackend) -> None:
    """Leases, peers, floating addresses, NAT, DHCP, DNS and services follow each new config."""
    config = config_for(net)
    await net.driver.ensure(config)
    base = config.gateway.rsplit(".", 1)[0]
    egress = config.egress_address.split("/")[0].rsplit(".", 1)[0]
    dns = replace(config, provide_dns=True, dns_domain="team-a.minicloud")
    steps = [
        replace(
            config,
            leases=(*config.leases[:1], Lease("02:00:00:aa:00:07", f"{base}.7", "guest-c")),
            peers=(UNDERLAY_TWO, "172.31.255.6"),
            floating=(Floating(f"{egress}.101", f"{base}.7"),),
            mtu=1400,
        ),
        replace(config, provide_nat=False, floating=(), peers=()),
        replace(config, provide_dhcp=False),
        dns,
        replace(dns, leases=(*dns.leases, Lease("02:00:00:aa:00:08", f"{base}.8", "guest-d"))),
        replace(dns, provide_dhcp=False),
        replace(config, services_here=False),
        config,
    ]
    for step in steps:
        await net.driver.ensure(step)
        assert net.observe(config.uuid) == expected(step), step


async def test_networks_ensured_at_once_are_all_carried(net: NetBackend) -> None:
    """Several networks ensured concurrently (sharing the egress bridge) all come out right."""
    configs = []
    for index in range(3):
        base = net.lab.netblock(10 + index) if net.lab else f"10.99.{10 + index}"
        egress = net.lab.egress_net if net.lab else "192.168.250"
        configs.append(
            config_for(
                net,
                base=base,
                egress_address=f"{egress}.{10 + index}/24",
                floating=(Floating(f"{egress}.{110 + index}", f"{base}.5"),),
            )
        )
    await asyncio.gather(*(net.driver.ensure(config) for config in configs))
    for config in configs:
        assert net.observe(config.uuid) == expected(config)
    assert sorted(await net.driver.present()) == sorted(c.uuid for c in configs)
    await asyncio.gather(*(net.driver.remove(config.uuid) for config in configs))
    assert await net.driver.present() == []


async def test_remove_deletes_everything_and_is_idempotent(net: NetBackend) -> None:
    """Remove leaves nothing for the network; removing again, or an unknown network, is fine."""
    config = config_for(net)
    await net.driver.ensure(config)
    await net.driver.remove(config.uuid)
    await net.driver.remove(config.uuid)
    await net.driver.remove(str(uuidlib.uuid4()))
    assert net.observe(config.uuid) is None
    assert config.uuid not in await net.driver.present()
    if net.lab is not None:
        assert driver_leftovers(net.driver) == []
        assert "minicloud" not in sh("iptables-save").stdout


@pytest.mark.parametrize(
    "overrides",
    [
        {"uuid": "../../etc"},
        {"vni": 0},
        {"vni": 2**24},
        {"netblock": "10.99.7.0/30", "gateway": "10.99.7.1", "leases": (), "floating": ()},
        {"netblock": "not-a-net"},
        {"gateway": "10.99.8.1"},
        {"gateway": "10.99.7.0"},
        {"leases": (Lease("02:00:00:aa:00:05", "10.99.8.5"),)},
        {"leases": (Lease("02:00:00:aa:00:05", "10.99.7.1"),)},
        {"leases": (Lease("zz:00:00:aa:00:05", "10.99.7.5"),)},
        {
            "leases": (
                Lease("02:00:00:aa:00:05", "10.99.7.5"),
                Lease("02:00:00:aa:00:05", "10.99.7.6"),
            )
        },
        {"peers": ("nowhere",)},
        {"egress_address": "192.168.250.5"},
        {"egress_gateway": "192.168.251.1"},
        {"floating": (Floating("192.168.250.100", "10.99.8.5"),)},
        {"egress_address": "", "egress_gateway": ""},
        {"mtu": 100},
        {"provide_dns": True, "dns_domain": "bad_domain"},
        {"provide_dns": True, "dns_domain": "a.example", "dns_upstream": ("resolver",)},
    ],
)
async def test_bad_configs_are_refused_and_make_nothing(
    net: NetBackend, overrides: dict[str, Any]
) -> None:
    """A bad config raises a NetworkError that is not retryable and leaves nothing behind."""
    with pytest.raises(NetworkError) as caught:
        await net.driver.ensure(new_config(**overrides))
    assert caught.value.retryable is False
    assert str(caught.value)
    assert await net.driver.present() == []
    if net.lab is not None:
        assert driver_leftovers(net.driver) == []


async def test_removing_a_malformed_uuid_is_refused(net: NetBackend) -> None:
    """A network UUID names files, so anything but a canonical UUID is refused."""
    for bad in ("../../etc", "", "6F1C2F0E-52B4-4A43-9D4E-0D1C2B3A4F50"):
        with pytest.raises(NetworkError):
            await net.driver.remove(bad)


# -- the Linux half: real packets between the lab's namespaces ----------------------------


async def test_dhcp_gives_exactly_the_leased_address(linux_net: NetBackend) -> None:
    """A guest gets its leased address and the gateway; a stranger gets nothing until leased."""
    net = linux_net
    assert net.lab is not None
    lab, config = net.lab, config_for(net)
    await net.driver.ensure(config)
    bridge = net.driver.bridge_name(config.uuid)
    lease = config.leases[0]
    guest = lab.guest(bridge, lease.mac)
    assert lab.dhcp(guest) == lease.address
    assert lab.ping(guest, config.gateway)
    stranger_mac = "02:00:00:aa:00:42"
    stranger = lab.guest(bridge, stranger_mac)
    assert lab.dhcp(stranger, tries=2) is None
    base = config.gateway.rsplit(".", 1)[0]
    await net.driver.ensure(
        replace(config, leases=(*config.leases, Lease(stranger_mac, f"{base}.42", "late")))
    )
    assert lab.dhcp(stranger) == f"{base}.42"


async def test_dns_answers_the_leases_names_in_the_domain_and_forwards_nothing(
    linux_net: NetBackend,
) -> None:
    """The gateway answers NAME.DOMAIN (and DHCP hands it out); names follow the leases.

    A name is gone as soon as its lease is, even for a guest that took the lease.
    """
    net = linux_net
    assert net.lab is not None
    lab = net.lab
    config = config_for(net, provide_dns=True, dns_domain="team-a.minicloud")
    await net.driver.ensure(config)
    guest = lab.guest(net.driver.bridge_name(config.uuid), config.leases[0].mac)
    assert lab.dhcp(guest) == config.leases[0].address
    assert lab.dhcp_option(guest, "dns") == config.gateway
    assert lab.dhcp_option(guest, "domain") == "team-a.minicloud"

    def lookup(name: str) -> str | None:
        return lab.resolve(guest, name, config.gateway)

    assert lookup("guest-a.team-a.minicloud") == config.leases[0].address
    assert lookup("guest-a") == config.leases[0].address
    assert lookup("nobody.team-a.minicloud") is None
    assert lookup("example.com") is None  # nothing is forwarded
    base = config.gateway.rsplit(".", 1)[0]
    late = Lease("02:00:00:aa:00:42", f"{base}.42", "late")
    await net.driver.ensure(replace(config, leases=(config.leases[0], late)))
    assert lookup("late.team-a.minicloud") == f"{base}.42"
    await net.driver.ensure(replace(config, leases=(late,)))
    assert lookup("guest-a.team-a.minicloud") is None


async def test_nat_and_floating_addresses_reach_the_outside(linux_net: NetBackend) -> None:
    """A guest reaches "outside" as the egress address; a floating address reaches the guest."""
    net = linux_net
    assert net.lab is not None
    lab, config = net.lab, config_for(net, floating=())
    await net.driver.ensure(config)
    egress_ip = config.egress_address.split("/")[0]
    outside_ip = f"{lab.egress_net}.200"
    outside = lab.namespace("outside")
    lab.attach(outside, f"{lab.prefix}egress", address=f"{outside_ip}/24", mtu=1500)
    lease = config.leases[0]
    guest = lab.guest(net.driver.bridge_name(config.uuid), lease.mac)
    assert lab.dhcp(guest) == lease.address
    lab.count_icmp_from(outside, egress_ip)
    assert lab.ping(guest, outside_ip)
    assert lab.icmp_count(outside, egress_ip) >= 1

    floating_ip = f"{lab.egress_net}.100"
    assert not lab.ping(outside, floating_ip, attempts=1)
    await net.driver.ensure(replace(config, floating=(Floating(floating_ip, lease.address),)))
    lab.count_icmp_from(guest, outside_ip)
    assert lab.ping(outside, floating_ip)
    assert lab.icmp_count(guest, outside_ip) >= 1  # DNAT kept the outside source
    lab.count_icmp_from(outside, floating_ip)
    assert lab.ping(guest, outside_ip)
    assert lab.icmp_count(outside, floating_ip) >= 1  # the floated guest goes out as itself

    await net.driver.ensure(config)
    assert not lab.ping(outside, floating_ip, attempts=1)


async def test_broken_pieces_are_repaired_by_ensure(linux_net: NetBackend) -> None:
    """A killed dnsmasq, a deleted veth and a flushed firewall come back on the next ensure."""
    net = linux_net
    assert net.lab is not None
    assert isinstance(net.driver, LinuxNetworkDriver)
    lab, config = net.lab, config_for(net)
    await net.driver.ensure(config)
    names = net.driver.names(config.uuid)
    pid = int((net.driver.folder(config.uuid) / "dnsmasq.pid").read_text())
    os.kill(pid, signal.SIGKILL)
    sh("ip", "link", "del", "dev", names.gateway_veth)
    sh("iptables", "-w", "-t", "nat", "-F", netns=names.netns)
    await asyncio.sleep(0.2)
    assert net.observe(config.uuid) != expected(config)
    await net.driver.ensure(config)
    assert net.observe(config.uuid) == expected(config)
    guest = lab.guest(net.driver.bridge_name(config.uuid), config.leases[0].mac)
    assert lab.dhcp(guest) == config.leases[0].address


async def test_a_bridge_of_another_network_is_left_alone(linux_net: NetBackend) -> None:
    """A bridge name whose alias names another network: ensure refuses, remove skips it."""
    net = linux_net
    assert net.lab is not None
    config = config_for(net)
    bridge = net.driver.bridge_name(config.uuid)
    sh("ip", "link", "add", bridge, "type", "bridge")
    sh("ip", "link", "set", "dev", bridge, "alias", f"minicloud-network:{uuidlib.uuid4()}")
    with pytest.raises(NetworkError) as caught:
        await net.driver.ensure(config)
    assert caught.value.retryable is False and "collision" in str(caught.value)
    await net.driver.remove(config.uuid)
    assert sh("ip", "link", "show", "dev", bridge, check=False).returncode == 0
    sh("ip", "link", "del", "dev", bridge)


async def test_ensure_twice_keeps_devices_and_dnsmasq(linux_net: NetBackend) -> None:
    """A second ensure of the same config recreates nothing: same links, same dnsmasq process."""
    net = linux_net
    assert net.lab is not None
    assert isinstance(net.driver, LinuxNetworkDriver)
    config = config_for(net)
    await net.driver.ensure(config)

    def snapshot() -> tuple[str, str, str, str]:
        assert isinstance(net.driver, LinuxNetworkDriver)
        names = net.driver.names(config.uuid)
        links = sh("ip", "-o", "link", "show").stdout
        indexes = sorted(line.split(":")[0] + line.split(":")[1] for line in links.splitlines())
        inner = sh("ip", "-o", "addr", netns=names.netns).stdout
        saved = sh("iptables-save", netns=names.netns).stdout.splitlines()
        rules = [line for line in saved if not line.startswith("#")]  # comments carry times
        pid = (net.driver.folder(config.uuid) / "dnsmasq.pid").read_text()
        return "\n".join(indexes), inner, "\n".join(rules), pid

    before = snapshot()
    await net.driver.ensure(config)
    assert snapshot() == before


async def test_two_nodes_carry_one_network_over_vxlan(lab: Lab) -> None:
    """Two drivers on separate underlays join one network: DHCP and pings cross the tunnel."""
    one, two = lab.underlay_pair(UNDERLAY_ONE, UNDERLAY_TWO)
    first = linux_driver(lab, one, UNDERLAY_ONE, lab.prefix)
    second = linux_driver(lab, two, UNDERLAY_TWO, lab.prefix + "z")
    base = lab.netblock(2)
    config = new_config(
        base=base, peers=(UNDERLAY_TWO,), egress_address="", egress_gateway="", floating=()
    )
    remote = replace(config, services_here=False, peers=(UNDERLAY_ONE,))
    try:
        await first.ensure(config)
        await second.ensure(remote)
        assert await first.present() == [config.uuid] == await second.present()
        assert first.bridge_name(config.uuid) != second.bridge_name(config.uuid)
        here = lab.guest(first.bridge_name(config.uuid), config.leases[0].mac)
        there = lab.guest(second.bridge_name(config.uuid), config.leases[1].mac)
        assert lab.dhcp(here) == config.leases[0].address
        assert lab.dhcp(there) == config.leases[1].address  # served across the tunnel
        assert lab.ping(there, config.leases[0].address)
        assert lab.ping(here, config.leases[1].address)
        assert lab.ping(there, config.gateway)

        await second.ensure(replace(remote, peers=()))
        assert not lab.ping(there, config.leases[0].address, attempts=1)
    finally:
        await first.remove(config.uuid)
        await second.remove(config.uuid)
    assert await first.present() == [] == await second.present()
    assert driver_leftovers(first) == [] == driver_leftovers(second)


def other_cluster_driver(lab: Lab, underlay_netns: str, address: str) -> LinuxNetworkDriver:
    """A second cluster's node agent on this host: the same prefix, its own data folder."""
    driver = LinuxNetworkDriver(
        LinuxNetworkSettings(
            data_dir=lab.work_dir / "other-cluster",
            underlay_address=address,
            underlay_netns=underlay_netns,
            name_prefix=lab.prefix,
            egress_bridge=f"{lab.prefix}egress2",
            claims_path=lab.work_dir / "network-claims.json",
        )
    )
    driver.claim("0ther000-contract")
    return driver


async def test_two_clusters_with_one_prefix_keep_to_their_own(lab: Lab) -> None:
    """Under one prefix, each cluster lists, removes and claims only what it recorded."""
    one, two = lab.underlay_pair(UNDERLAY_ONE, UNDERLAY_TWO)
    ours = linux_driver(lab, one, UNDERLAY_ONE, lab.prefix)
    theirs = other_cluster_driver(lab, two, UNDERLAY_TWO)
    mine = new_config(base=lab.netblock(3), egress_address="", egress_gateway="", floating=())
    other = new_config(base=lab.netblock(4), egress_address="", egress_gateway="", floating=())
    try:
        await ours.ensure(mine)
        await theirs.ensure(other)
        assert await ours.present() == [mine.uuid]
        assert await theirs.present() == [other.uuid]
        await ours.remove(other.uuid)  # not ours: left alone
        assert sh("ip", "link", "show", "dev", theirs.bridge_name(other.uuid)).returncode == 0
        restarted = linux_driver(lab, one, UNDERLAY_ONE, lab.prefix)
        assert await restarted.present() == [mine.uuid]
        with pytest.raises(ClaimRefused, match=f"VXLAN id {mine.vni} is used on this host"):
            await theirs.ensure(replace(other, uuid=str(uuidlib.uuid4()), vni=mine.vni))
        with pytest.raises(ClaimRefused, match="egress bridge"):
            other_egress = LinuxNetworkSettings(
                data_dir=lab.work_dir / "third",
                underlay_address=UNDERLAY_TWO,
                name_prefix=lab.prefix,
                egress_bridge=f"{lab.prefix}egress",
                claims_path=lab.work_dir / "network-claims.json",
            )
            LinuxNetworkDriver(other_egress).claim("third000-contract")
    finally:
        await ours.remove(mine.uuid)
        await theirs.remove(other.uuid)
    assert await ours.present() == [] == await theirs.present()
    assert driver_leftovers(ours) == []


async def test_networks_made_before_the_record_are_adopted_only_when_asked(lab: Lab) -> None:
    """A network of the older format stays unlisted until its control plane asks for it."""
    one, _ = lab.underlay_pair(UNDERLAY_ONE, UNDERLAY_TWO)
    driver = linux_driver(lab, one, UNDERLAY_ONE, lab.prefix)
    config = new_config(base=lab.netblock(5), egress_address="", egress_gateway="", floating=())
    await driver.ensure(config)
    assert driver.record is not None
    driver.record.path.unlink()  # as a node agent from before the record left it
    upgraded = linux_driver(lab, one, UNDERLAY_ONE, lab.prefix)
    try:
        assert await upgraded.present() == []
        assert upgraded.record is not None and config.uuid in upgraded.record.legacy
        await upgraded.ensure(config)  # the control plane knows it: adopted, not refused
        assert await upgraded.present() == [config.uuid]
    finally:
        await upgraded.remove(config.uuid)
    assert driver_leftovers(upgraded) == []
