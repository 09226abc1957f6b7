"""The Linux network adapter: bridges, VXLAN, namespaces, dnsmasq and iptables.

The only module that runs ``ip``, ``bridge``, ``iptables`` and ``dnsmasq``;
every command goes through ``Runner`` (timeouts, errors become NetworkError
with the command and its stderr) on a worker thread, never on the event loop.

Per network (names in nodeagent/network/naming.py):

- a bridge with the network's MTU, no addresses and no IPv6, and a VXLAN
  device (VNI = the network's, UDP 4789, ``nolearning``, ``local`` = this
  node's underlay address) enslaved to it, flooding to every peer through
  static all-zero FDB entries. With ``underlay_netns`` set the VXLAN device
  is created in that namespace (its UDP socket stays there) and then moved
  into ours: how tests stand in several hypervisors on one machine.
- when the node hosts the network's services: a namespace holding the
  gateway address on ``gw0`` (a veth into the bridge), IPv4 forwarding on
  in that namespace only, dnsmasq (one per network, run inside the namespace,
  files under ``<data_dir>/networks/<uuid>/``) answering exactly the leases
  (and, with DNS, the leases' hostnames as ``NAME.DOMAIN`` from ``dns-hosts``),
  and with NAT an ``eg0`` veth into the node's egress bridge holding the
  egress address and the floating addresses, a default route via the egress
  gateway, SNAT of the netblock to the egress address, DNAT of each floating
  address to its inner address and SNAT back. The namespace's firewall is
  written whole with iptables-restore whenever it differs from what it should
  be (every rule carries a ``minicloud`` comment).

Each link and the namespace's loopback carry ``minicloud-network:<uuid>`` as
their alias, and the network's folder holds ``network.json``. What the driver
makes is recorded as its cluster's (``nodeagent.network.record``, opened by
``claim``): ``present`` lists only the recorded networks, and ``ensure`` and
``remove`` touch nothing the record does not hold. VXLAN ids, the egress
bridge and the floating range are claimed host-wide
(``nodeagent.network.claims``) against other clusters' node agents.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable
from contextlib import suppress
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import structlog

from nodeagent.network.claims import DEFAULT_PATH, HostClaims
from nodeagent.network.naming import (
    ALIAS_PREFIX,
    EGRESS_INNER,
    GATEWAY_INNER,
    Names,
    check_prefix,
    name_pattern,
)
from nodeagent.network.protocol import NetworkConfig, NetworkError
from nodeagent.network.record import NetworkRecord, RecordError
from nodeagent.network.validation import Checked, check, check_uuid, dhcp_hostname
from nodeagent.settings import Settings

log = structlog.get_logger(__name__)

VXLAN_PORT = 4789
UUID_PATTERN = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")
ZERO_MAC = "00:00:00:00:00:00"
NAT_COMMENT = "minicloud nat"
FORWARD_COMMENT = "minicloud forward"
DHCP_LEASE_TIME = "1h"
DHCP_HOSTS = "dhcp-hosts"
DNS_HOSTS = "dns-hosts"


@dataclass(frozen=True)
class LinuxNetworkSettings:
    """What the Linux adapter needs to know about its node."""

    # Networks' files live in data_dir/networks/<uuid>/.
    data_dir: Path
    # This node's end of VXLAN tunnels (the node's address by default).
    underlay_address: str
    # The bridge that egress veths join (made on demand).
    egress_bridge: str = "mcegress"
    # Create VXLAN devices in this namespace (their underlay), then move them here.
    underlay_netns: str = ""
    # First letters of every device and namespace name (1-4 of [a-z0-9]).
    name_prefix: str = "mc"
    command_timeout: float = 20.0
    # The host-wide claims file (VXLAN ids, egress bridge, floating range per cluster).
    claims_path: Path = DEFAULT_PATH

    @classmethod
    def from_node(cls, settings: Settings) -> LinuxNetworkSettings:
        """The adapter's settings from the node agent's."""
        return cls(
            data_dir=settings.data_dir,
            underlay_address=settings.network_underlay_address or settings.address,
            egress_bridge=settings.network_egress_bridge,
            underlay_netns=settings.network_underlay_netns,
            name_prefix=settings.network_name_prefix,
            claims_path=settings.network_claims,
        )


class Runner:
    """Runs commands with a timeout; a failure is a NetworkError naming the command."""

    def __init__(self, timeout: float) -> None:
        self.timeout = timeout

    def run(
        self, *argv: str, netns: str = "", check: bool = True, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """Run argv (inside netns if given); raise NetworkError if check and it fails."""
        command = list(argv)
        if netns:
            if command[0] in ("ip", "bridge"):
                command[1:1] = ["-n", netns]
            else:
                command = ["ip", "netns", "exec", netns, *command]
        try:
            result = subprocess.run(
                command,
                input=stdin,
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
            )
        except FileNotFoundError:
            raise NetworkError(f"{command[0]} is not installed", retryable=False) from None
        except subprocess.TimeoutExpired:
            raise NetworkError(
                f"`{shlex.join(command)}` timed out after {self.timeout}s", retryable=True
            ) from None
        if check and result.returncode != 0:
            raise NetworkError(
                f"`{shlex.join(command)}` failed (exit {result.returncode}): "
                f"{result.stderr.strip()}",
                retryable=True,
            )
        return result

    def json(self, *argv: str, netns: str = "") -> Any:
        """Run a command with JSON output (``ip -j ...``); None when it fails."""
        result = self.run(*argv, netns=netns, check=False)
        if result.returncode != 0:
            return None
        return json.loads(result.stdout) if result.stdout.strip() else []


class LinuxNetworkDriver:
    """The NetworkDriver port on a Linux node (root, iproute2, iptables, dnsmasq)."""

    def __init__(self, settings: LinuxNetworkSettings) -> None:
        self.settings = settings
        self.prefix = check_prefix(settings.name_prefix)
        self.runner = Runner(settings.command_timeout)
        self.networks_dir = settings.data_dir / "networks"
        self._locks: dict[str, asyncio.Lock] = {}
        self._egress_lock = threading.Lock()
        self.claims = HostClaims(settings.claims_path)
        # This cluster's record of what the driver made (None until claim).
        self.record: NetworkRecord | None = None
        self._record_lock = threading.Lock()

    # -- the port --------------------------------------------------------------

    def bridge_name(self, network_uuid: str) -> str:
        return self.names(network_uuid).bridge

    async def ensure(self, config: NetworkConfig) -> None:
        checked = check(config)
        async with self._lock(config.uuid):
            await _off_loop(self._ensure, config, checked)

    async def remove(self, network_uuid: str) -> None:
        check_uuid(network_uuid)
        async with self._lock(network_uuid):
            await _off_loop(self._remove, network_uuid)

    async def present(self) -> list[str]:
        return await _off_loop(self._present)

    def claim(self, cluster_id: str) -> None:
        """Serve cluster_id: open (or make) its record; claim the egress bridge and the
        cluster's floating range on this host (ClaimRefused if another cluster has them)."""
        if not cluster_id or (self.record is not None and self.record.cluster_id == cluster_id):
            return
        data_dir = self.settings.data_dir
        legacy = None
        if not NetworkRecord.exists(data_dir, cluster_id):
            try:
                found = self._scan()
            except (NetworkError, OSError, ValueError) as exc:
                raise RecordError(
                    f"cannot look for networks made before the network record: {exc}"
                ) from None
            legacy = {
                uuid: Names.of(self.prefix, uuid)
                for uuid in found - self.claims.networks_of_others(cluster_id)
            }
        record = NetworkRecord.open(data_dir, cluster_id, legacy)
        self.claims.claim(
            record.path,
            cluster_id,
            egress_bridge=self.settings.egress_bridge,
            floating=record.floating,
        )
        with self._record_lock:
            self.record = record
        if record.legacy:
            log.warning(
                "networks made before the network record are left alone unless this "
                "cluster's control plane asks for them",
                networks=sorted(record.legacy),
            )

    # -- helpers shared by the steps ---------------------------------------------

    def names(self, network_uuid: str) -> Names:
        """This driver's names for a network (those it was recorded under, if it was)."""
        found = self.record.names(network_uuid) if self.record is not None else None
        return found or Names.of(self.prefix, network_uuid)

    def _required(self) -> NetworkRecord:
        if self.record is None:
            raise NetworkError("this node agent does not know its cluster yet", retryable=True)
        return self.record

    def _taken(self, names: Names) -> list[str]:
        """Which of these names exist on the host."""
        found = [n for n in names.root_links if Path("/sys/class/net", n).exists()]
        return found + ([names.netns] if self._netns_exists(names.netns) else [])

    def _own(self, config: NetworkConfig) -> Names:
        """The names of a network this cluster may make or change: recorded, adopted from
        before the record, or new (and free); its VXLAN id claimed; written down first."""
        record = self._required()
        uuid = config.uuid
        with self._record_lock:
            names = record.names(uuid)
            if names is not None and record.vni(uuid) == config.vni:
                return names
            old_vni = record.vni(uuid)
            if names is None:
                names = record.legacy_names(uuid)
                if names is not None:
                    log.info("adopting a network made before the network record", network=uuid)
                else:
                    names = Names.of(self.prefix, uuid)
                    if taken := self._taken(names):
                        raise NetworkError(
                            f"{', '.join(taken)} exist on this host but are not recorded as "
                            f"this cluster's (another cluster's network, or a name hash "
                            f"collision): network {uuid} cannot be made here",
                            retryable=False,
                        )
            self.claims.claim(record.path, record.cluster_id, vni=config.vni, network=uuid)
            record.add(uuid, names, config.vni)
        if old_vni:
            self.claims.release_vni(record.path, old_vni)
        return names

    def folder(self, network_uuid: str) -> Path:
        """The network's files (config record, DHCP hosts, dnsmasq pid and log)."""
        return self.networks_dir / network_uuid

    def _lock(self, network_uuid: str) -> asyncio.Lock:
        return self._locks.setdefault(network_uuid, asyncio.Lock())

    def _ip(self, *argv: str, netns: str = "") -> None:
        self.runner.run("ip", *argv, netns=netns)

    def _link(self, name: str, netns: str = "") -> dict[str, Any] | None:
        found = self.runner.json("ip", "-j", "-d", "link", "show", "dev", name, netns=netns)
        return found[0] if found else None

    def _netns_exists(self, name: str) -> bool:
        return Path("/run/netns", name).exists()

    def _delete_link(self, name: str, network_uuid: str, netns: str = "") -> None:
        """Delete a link unless its alias says it belongs to another network."""
        link = self._link(name, netns)
        if link is None:
            return
        alias = link.get("ifalias", "")
        if alias.startswith(ALIAS_PREFIX) and alias != ALIAS_PREFIX + network_uuid:
            return
        self.runner.run("ip", "link", "del", "dev", name, netns=netns, check=False)

    def _set_link(
        self, link: dict[str, Any], network_uuid: str, mtu: int, master: str = "", netns: str = ""
    ) -> None:
        """Give a link its alias, MTU and master and bring it up, changing only what differs."""
        name = link["ifname"]
        alias = ALIAS_PREFIX + network_uuid
        if link.get("ifalias") != alias:
            self._ip("link", "set", "dev", name, "alias", alias, netns=netns)
        if link.get("mtu") != mtu:
            self._ip("link", "set", "dev", name, "mtu", str(mtu), netns=netns)
        if master and link.get("master") != master:
            self._ip("link", "set", "dev", name, "master", master, netns=netns)
        if "UP" not in link.get("flags", []):
            self._ip("link", "set", "dev", name, "up", netns=netns)

    def _no_ipv6(self, name: str) -> None:
        """Turn IPv6 off on a root-namespace link: the node has no business on guest segments."""
        path = Path("/proc/sys/net/ipv6/conf", name, "disable_ipv6")
        if path.exists() and path.read_text().strip() != "1":
            path.write_text("1\n")

    def _converge_addresses(self, device: str, wanted: set[str], netns: str) -> None:
        """Make the device's IPv4 addresses exactly ``wanted`` (address/prefix strings)."""
        found = self.runner.json("ip", "-j", "-4", "addr", "show", "dev", device, netns=netns)
        current = {
            f"{info['local']}/{info['prefixlen']}"
            for entry in found or []
            for info in entry.get("addr_info", [])
        }
        for extra in sorted(current - wanted):
            self._ip("addr", "del", extra, "dev", device, netns=netns)
        for missing in sorted(wanted - current):
            self._ip("addr", "add", missing, "dev", device, netns=netns)

    def _veth(
        self,
        outer: str,
        inner: str,
        netns: str,
        network_uuid: str,
        mtu: int,
        master: str,
    ) -> None:
        """A veth pair: ``outer`` here enslaved to master, ``inner`` inside netns, both up."""
        link = self._link(outer)
        inside = self._link(inner, netns)
        if link is None or inside is None:
            self._delete_link(outer, network_uuid)
            self.runner.run("ip", "link", "del", "dev", inner, netns=netns, check=False)
            self._ip(
                "link", "add", outer, "mtu", str(mtu), "type", "veth",
                "peer", "name", inner, "mtu", str(mtu), "netns", netns,
            )  # fmt: skip
            link, inside = self._link(outer), self._link(inner, netns)
            if link is None or inside is None:
                raise NetworkError(f"veth {outer}/{inner} vanished after creation", retryable=True)
        self._no_ipv6(outer)
        self._set_link(link, network_uuid, mtu, master=master)
        self._set_link(inside, network_uuid, mtu, netns=netns)

    # -- ensure ------------------------------------------------------------------

    def _ensure(self, config: NetworkConfig, checked: Checked) -> None:
        names = self._own(config)
        if checked.egress is not None:
            record = self._required()
            floating = str(ipaddress.ip_interface(config.egress_address).network)
            if floating != record.floating:
                self.claims.claim(record.path, record.cluster_id, floating=floating)
                with self._record_lock:
                    record.set_floating(floating)
        folder = self.folder(config.uuid)
        folder.mkdir(parents=True, exist_ok=True)
        for path in (self.networks_dir, folder):
            path.chmod(0o755)
        _write_if_changed(folder / "network.json", json.dumps(asdict(config), indent=1) + "\n")
        self._ensure_bridge(names, config)
        self._ensure_vxlan(names, config)
        if not config.services_here:
            self._remove_services(names, config.uuid)
            return
        self._ensure_namespace(names, config)
        self._veth(
            names.gateway_veth, GATEWAY_INNER, names.netns, config.uuid, config.mtu, names.bridge
        )
        prefix = checked.netblock.prefixlen
        self._converge_addresses(GATEWAY_INNER, {f"{checked.gateway}/{prefix}"}, names.netns)
        if config.provide_dhcp or config.provide_dns:
            self._ensure_dnsmasq(names, config, checked)
        else:
            self._stop_dnsmasq(config.uuid)
        if checked.egress is not None:
            self._ensure_egress(names, config, checked.egress)
        else:
            self._delete_link(names.egress_veth, config.uuid)
        self._ensure_firewall(names, config, checked)
        log.info("network ensured", network=config.uuid, bridge=names.bridge)

    def _ensure_bridge(self, names: Names, config: NetworkConfig) -> None:
        link = self._link(names.bridge)
        if link is not None:
            alias = link.get("ifalias", "")
            if alias.startswith(ALIAS_PREFIX) and alias != ALIAS_PREFIX + config.uuid:
                raise NetworkError(
                    f"bridge {names.bridge} belongs to {alias[len(ALIAS_PREFIX) :]}, "
                    f"not {config.uuid} (name hash collision)",
                    retryable=False,
                )
            if link.get("linkinfo", {}).get("info_kind") != "bridge":
                self._ip("link", "del", "dev", names.bridge)
                link = None
        if link is None:
            self._ip(
                "link", "add", names.bridge, "mtu", str(config.mtu), "type", "bridge",
                "stp_state", "0", "forward_delay", "0",
            )  # fmt: skip
            link = self._link(names.bridge)
            if link is None:
                raise NetworkError(f"bridge {names.bridge} vanished after creation", retryable=True)
        self._no_ipv6(names.bridge)
        self._set_link(link, config.uuid, config.mtu)

    def _ensure_vxlan(self, names: Names, config: NetworkConfig) -> None:
        local = self.settings.underlay_address
        link = self._link(names.vxlan)
        if link is not None:
            info = link.get("linkinfo", {})
            data = info.get("info_data", {})
            wanted = (info.get("info_kind"), data.get("id"), data.get("local"), data.get("port"))
            # A device made in an underlay namespace shows that namespace as its link-netns.
            moved = "link_netnsid" in link
            if wanted != ("vxlan", config.vni, local, VXLAN_PORT) or moved != bool(
                self.settings.underlay_netns
            ):
                self._delete_link(names.vxlan, config.uuid)
                link = None
        if link is None:
            underlay = self.settings.underlay_netns
            if underlay:
                self.runner.run(
                    "ip", "link", "del", "dev", names.vxlan, netns=underlay, check=False
                )
            self._ip(
                "link", "add", names.vxlan, "mtu", str(config.mtu), "type", "vxlan",
                "id", str(config.vni), "dstport", str(VXLAN_PORT), "local", local, "nolearning",
                netns=underlay,
            )  # fmt: skip
            if underlay:
                self._ip(
                    "link", "set", "dev", names.vxlan, "netns", str(os.getpid()), netns=underlay
                )
            link = self._link(names.vxlan)
            if link is None:
                raise NetworkError(f"VXLAN {names.vxlan} vanished after creation", retryable=True)
        self._no_ipv6(names.vxlan)
        self._set_link(link, config.uuid, config.mtu, master=names.bridge)
        entries = self.runner.json("bridge", "-j", "fdb", "show", "dev", names.vxlan) or []
        current = {e["dst"] for e in entries if e.get("mac") == ZERO_MAC and "dst" in e}
        wanted_peers = set(config.peers) - {local}
        for gone in sorted(current - wanted_peers):
            self.runner.run("bridge", "fdb", "del", ZERO_MAC, "dev", names.vxlan, "dst", gone)
        for peer in sorted(wanted_peers - current):
            self.runner.run(
                "bridge", "fdb", "append", ZERO_MAC, "dev", names.vxlan, "dst", peer,
                "self", "permanent",
            )  # fmt: skip

    def _ensure_namespace(self, names: Names, config: NetworkConfig) -> None:
        if not self._netns_exists(names.netns):
            self._ip("netns", "add", names.netns)
        loopback = self._link("lo", names.netns)
        if loopback is None:
            raise NetworkError(f"namespace {names.netns} has no loopback", retryable=True)
        self._set_link(loopback, config.uuid, loopback["mtu"], netns=names.netns)
        self.runner.run(
            "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1", netns=names.netns,
        )  # fmt: skip

    def _ensure_egress_bridge(self, config: NetworkConfig, egress: ipaddress.IPv4Interface) -> None:
        """The shared egress bridge, up; one the driver makes gets the egress gateway address.

        A bridge the operator made (say with the uplink enslaved, the real
        router holding the gateway address) is used as it is.
        """
        bridge = self.settings.egress_bridge
        with self._egress_lock:
            link = self._link(bridge)
            if link is None:
                self._ip("link", "add", bridge, "type", "bridge", "stp_state", "0",
                         "forward_delay", "0")  # fmt: skip
                if config.egress_gateway:
                    address = f"{config.egress_gateway}/{egress.network.prefixlen}"
                    self._ip("addr", "add", address, "dev", bridge)
                link = self._link(bridge)
                if link is None:
                    raise NetworkError(f"egress bridge {bridge} vanished", retryable=True)
            if "UP" not in link.get("flags", []):
                self._ip("link", "set", "dev", bridge, "up")

    def _ensure_egress(
        self, names: Names, config: NetworkConfig, egress: ipaddress.IPv4Interface
    ) -> None:
        self._ensure_egress_bridge(config, egress)
        bridge = self.settings.egress_bridge
        mtu = self._link(bridge) or {}
        self._veth(
            names.egress_veth, EGRESS_INNER, names.netns, config.uuid,
            int(mtu.get("mtu", 1500)), bridge,
        )  # fmt: skip
        wanted = {str(egress)} | {f"{f.address}/32" for f in config.floating}
        self._converge_addresses(EGRESS_INNER, wanted, names.netns)
        routes = self.runner.json("ip", "-j", "-4", "route", "show", "default", netns=names.netns)
        current = [(r.get("gateway", ""), r.get("dev", "")) for r in routes or []]
        if config.egress_gateway:
            if current != [(config.egress_gateway, EGRESS_INNER)]:
                self._ip(
                    "route", "replace", "default", "via", config.egress_gateway,
                    "dev", EGRESS_INNER, netns=names.netns,
                )  # fmt: skip
        elif current:
            self._ip("route", "del", "default", netns=names.netns)

    def _ensure_firewall(self, names: Names, config: NetworkConfig, checked: Checked) -> None:
        nat, forward = firewall_rules(config, checked)
        current_nat = self._rules("nat", names.netns)
        current_forward = self._rules("filter", names.netns)
        policy = self._policy("filter", "FORWARD", names.netns)
        if current_nat == nat and current_forward == forward and policy == "DROP":
            return
        script = ["*nat", *(f":{c} ACCEPT [0:0]" for c in NAT_CHAINS), *nat, "COMMIT"]
        script += ["*filter", ":INPUT ACCEPT [0:0]", ":FORWARD DROP [0:0]", ":OUTPUT ACCEPT [0:0]"]
        script += [*forward, "COMMIT", ""]
        self.runner.run("iptables-restore", netns=names.netns, stdin="\n".join(script))

    def _rules(self, table: str, netns: str) -> list[str]:
        out = self.runner.run("iptables", "-w", "-t", table, "-S", netns=netns).stdout
        return [line for line in out.splitlines() if line.startswith("-A ")]

    def _policy(self, table: str, chain: str, netns: str) -> str:
        out = self.runner.run("iptables", "-w", "-t", table, "-S", chain, netns=netns).stdout
        for line in out.splitlines():
            parts = line.split()
            if parts[:2] == ["-P", chain]:
                return parts[2]
        return ""

    # -- dnsmasq -------------------------------------------------------------------

    def _dnsmasq_argv(self, config: NetworkConfig, checked: Checked) -> list[str]:
        return dnsmasq_argv(config, checked, self.folder(config.uuid))

    def _dnsmasq_pids(self, network_uuid: str) -> dict[int, list[str]]:
        """Running dnsmasq processes of this network (found by their pid-file argument)."""
        marker = f"--pid-file={self.folder(network_uuid) / 'dnsmasq.pid'}"
        found: dict[int, list[str]] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")[:-1]
            except OSError:
                continue
            if argv and Path(argv[0]).name == "dnsmasq" and marker in argv:
                found[int(entry.name)] = argv
        return found

    def _ensure_dnsmasq(self, names: Names, config: NetworkConfig, checked: Checked) -> None:
        folder = self.folder(config.uuid)
        dns_file = folder / DNS_HOSTS
        names_before = set(_read(dns_file).splitlines())
        files = {folder / DHCP_HOSTS: dhcp_hosts(config), dns_file: dns_hosts(config)}
        changed = [path for path, text in files.items() if _write_if_changed(path, text)]
        # dnsmasq gives a lease the name its address has in dns-hosts and keeps serving
        # it while the lease lives (in its memory): a name gone needs a fresh dnsmasq.
        names_gone = bool(names_before - set(files[dns_file].splitlines()))
        argv = self._dnsmasq_argv(config, checked)
        running = self._dnsmasq_pids(config.uuid)
        if len(running) == 1 and next(iter(running.values()))[1:] == argv[1:]:
            if not changed:
                return
            # dnsmasq rereads as nobody: if it could not see a file, restart it.
            if not names_gone and all(_readable_by_all(path) for path in changed):
                os.kill(next(iter(running)), signal.SIGHUP)  # rereads both hosts files
                return
        self._stop_dnsmasq(config.uuid, keep_files=True)
        self.runner.run(*argv, netns=names.netns)
        log.info(
            "dnsmasq started", network=config.uuid, namespace=names.netns, dns=config.provide_dns
        )

    def _stop_dnsmasq(self, network_uuid: str, keep_files: bool = False) -> None:
        _terminate(list(self._dnsmasq_pids(network_uuid)))
        if not keep_files:
            for name in (DHCP_HOSTS, DNS_HOSTS, "dnsmasq.pid", "dnsmasq.log"):
                (self.folder(network_uuid) / name).unlink(missing_ok=True)

    # -- remove ----------------------------------------------------------------------

    def _remove_services(self, names: Names, network_uuid: str) -> None:
        """Remove the namespace and everything in it (dnsmasq, veths, firewall)."""
        self._stop_dnsmasq(network_uuid)
        if self._netns_exists(names.netns):
            pids = self.runner.run("ip", "netns", "pids", names.netns, check=False).stdout
            _terminate([int(p) for p in pids.split()])
            self._ip("netns", "del", names.netns)
        self._delete_link(names.gateway_veth, network_uuid)
        self._delete_link(names.egress_veth, network_uuid)

    def _remove(self, network_uuid: str) -> None:
        record = self._required()
        uuid = network_uuid
        with self._record_lock:
            found = record.names(uuid)
            if found is None:
                found = record.legacy_names(uuid)
                if found is None:
                    log.info("not removing a network this cluster did not make", network=uuid)
                    return
                log.info("removing a network made before the network record", network=uuid)
        names = found
        self._remove_services(names, network_uuid)
        self._delete_link(names.vxlan, network_uuid)
        if self.settings.underlay_netns:
            self._delete_link(names.vxlan, network_uuid, self.settings.underlay_netns)
        self._delete_link(names.bridge, network_uuid)
        shutil.rmtree(self.folder(network_uuid), ignore_errors=True)
        vni = record.vni(network_uuid)
        with self._record_lock:
            record.drop(network_uuid)
        if vni:
            self.claims.release_vni(record.path, vni)
        log.info("network removed", network=network_uuid)

    # -- present -----------------------------------------------------------------------

    def _present(self) -> list[str]:
        record = self.record
        if record is None:
            return []
        if record.legacy:
            log.warning(
                "left alone: networks made before the network record that this cluster's "
                "control plane has not asked for",
                networks=sorted(record.legacy),
            )
        return sorted(record.networks)

    def _scan(self) -> set[str]:
        """Networks of the format before the record: devices under this prefix with a
        network alias, namespaces, and folders in this data folder."""
        pattern = name_pattern(self.prefix)
        found: set[str] = set()

        def from_links(links: list[dict[str, Any]] | None) -> None:
            for link in links or []:
                alias = link.get("ifalias", "")
                if pattern.match(link.get("ifname", "")) and alias.startswith(ALIAS_PREFIX):
                    found.add(alias[len(ALIAS_PREFIX) :])

        from_links(self.runner.json("ip", "-j", "link", "show"))
        if self.settings.underlay_netns:
            from_links(
                self.runner.json("ip", "-j", "link", "show", netns=self.settings.underlay_netns)
            )
        netns_dir = Path("/run/netns")
        for namespace in sorted(netns_dir.iterdir()) if netns_dir.exists() else []:
            if pattern.match(namespace.name):
                loopback = self._link("lo", namespace.name) or {}
                from_links([{**loopback, "ifname": namespace.name}])
        if self.networks_dir.exists():
            found.update(p.name for p in self.networks_dir.iterdir() if p.is_dir())
        return {uuid for uuid in found if UUID_PATTERN.match(uuid)}


NAT_CHAINS = ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING")


def dnsmasq_argv(config: NetworkConfig, checked: Checked, folder: Path) -> list[str]:
    """dnsmasq's command line for a network: DHCP for exactly the leases, DNS if asked.

    Nothing is read from the node (``--conf-file=/dev/null``, ``--no-resolv``,
    ``--no-hosts``). Without DNS, ``--port=0``. With DNS, the network's domain
    is local (never forwarded), the names come from ``dns-hosts`` and DHCP
    hands out the gateway as the DNS server; other names go to the upstream
    servers only when there are some (with none, nothing is forwarded).
    """
    netblock = checked.netblock
    argv = [
        "dnsmasq",
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
    ]
    if config.provide_dns:
        domain = config.dns_domain
        argv += [
            f"--domain={domain}",
            f"--local=/{domain}/",
            "--domain-needed",
            "--bogus-priv",
            f"--addn-hosts={folder / DNS_HOSTS}",
            *(f"--server={server}" for server in config.dns_upstream),
        ]
    else:
        argv.append("--port=0")
    argv += ["--bind-interfaces", f"--interface={GATEWAY_INNER}"]
    if config.provide_dhcp:
        argv += [
            f"--dhcp-range={netblock.network_address},static,{netblock.netmask},{DHCP_LEASE_TIME}",
            f"--dhcp-hostsfile={folder / DHCP_HOSTS}",
            f"--dhcp-option=option:router,{checked.gateway}",
            f"--dhcp-option=option:mtu,{config.mtu}",
        ]
        if config.provide_dns:
            argv += [f"--dhcp-option=option:dns-server,{checked.gateway}", "--dhcp-ignore-names"]
        argv += ["--dhcp-authoritative", "--leasefile-ro"]
    argv += [f"--pid-file={folder / 'dnsmasq.pid'}", f"--log-facility={folder / 'dnsmasq.log'}"]
    return argv


def dhcp_hosts(config: NetworkConfig) -> str:
    """The ``dhcp-hosts`` file: one ``mac,ip[,hostname]`` line per lease.

    With DNS the hostnames are left out: dnsmasq would also serve a name it
    gave with a lease, and keep serving it after the lease is gone (leases
    live in its memory until they expire), so names come from ``dns-hosts``
    alone (and clients' own names are ignored).
    """
    lines = []
    for lease in config.leases:
        fields = [lease.mac.lower(), lease.address]
        if not config.provide_dns and (hostname := dhcp_hostname(lease.hostname)):
            fields.append(hostname)
        lines.append(",".join(fields) + "\n")
    return "".join(lines)


def dns_hosts(config: NetworkConfig) -> str:
    """The ``dns-hosts`` file: ``ip NAME.DOMAIN NAME`` per lease with a valid, new hostname.

    Empty without DNS. A hostname that is not one DNS label is left out; when
    two leases share one, the first keeps it.
    """
    if not config.provide_dns:
        return ""
    lines = []
    seen: set[str] = set()
    for lease in config.leases:
        hostname = dhcp_hostname(lease.hostname).lower()
        if not hostname or hostname in seen:
            continue
        seen.add(hostname)
        lines.append(f"{lease.address} {hostname}.{config.dns_domain} {hostname}\n")
    return "".join(lines)


P = ParamSpec("P")
T = TypeVar("T")


async def _off_loop(function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
    """Run blocking work on a thread; OS and parse errors become retryable NetworkErrors."""
    try:
        return await asyncio.to_thread(function, *args, **kwargs)
    except (OSError, ValueError, KeyError) as exc:
        raise NetworkError(f"{type(exc).__name__}: {exc}", retryable=True) from exc


def firewall_rules(config: NetworkConfig, checked: Checked) -> tuple[list[str], list[str]]:
    """The namespace's nat and filter rules, as ``iptables -S`` prints them."""
    if checked.egress is None:
        return [], []
    out, net = EGRESS_INNER, str(checked.netblock)
    nat: list[str] = []
    snat: list[str] = []
    for entry in config.floating:
        comment = f'-m comment --comment "minicloud floating {entry.address}"'
        nat.append(
            f"-A PREROUTING -d {entry.address}/32 -i {out} {comment} "
            f"-j DNAT --to-destination {entry.inner_address}"
        )
        snat.append(
            f"-A POSTROUTING -s {entry.inner_address}/32 -o {out} {comment} "
            f"-j SNAT --to-source {entry.address}"
        )
    snat.append(
        f'-A POSTROUTING -s {net} -o {out} -m comment --comment "{NAT_COMMENT}" '
        f"-j SNAT --to-source {checked.egress.ip}"
    )
    forward = [
        f"-A FORWARD -s {net} -i {GATEWAY_INNER} -o {out} "
        f'-m comment --comment "{FORWARD_COMMENT}" -j ACCEPT',
        f"-A FORWARD -i {out} -o {GATEWAY_INNER} -m conntrack --ctstate RELATED,ESTABLISHED,DNAT "
        f'-m comment --comment "{FORWARD_COMMENT}" -j ACCEPT',
    ]
    return nat + snat, forward


def _write_if_changed(path: Path, text: str) -> bool:
    """Replace a file's content atomically (mode 0644) if it differs; True if it did."""
    try:
        if path.read_text() == text:
            return False
    except FileNotFoundError:
        pass
    temporary = path.with_name(path.name + ".new")
    temporary.write_text(text)
    temporary.chmod(0o644)
    temporary.replace(path)
    return True


def _read(path: Path) -> str:
    """A file's text, or empty when it does not exist."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def _readable_by_all(path: Path) -> bool:
    """Whether an unprivileged user (dnsmasq after it drops root) can read the file."""
    if not path.stat().st_mode & 0o004:
        return False
    return all(parent.stat().st_mode & 0o001 for parent in path.resolve().parents)


def _terminate(pids: list[int], grace: float = 3.0) -> None:
    """SIGTERM the processes, then SIGKILL those still alive after the grace period."""
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        pids = [pid for pid in pids if _alive(pid)]
        if pids:
            time.sleep(0.05)
    for pid in pids:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _alive(pid: int) -> bool:
    """Whether a process exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"
