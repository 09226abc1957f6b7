"""A little network laboratory for the Linux network driver's contract tests.

Stands in guests, an "outside" world and underlay links with network
namespaces and veth pairs, all named with one random prefix so the lab can
find and delete everything it (or a driver under test) made, even after a
failure. Traffic only ever goes between namespaces the lab created.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from pathlib import Path

TOOLS = ("ip", "bridge", "iptables", "iptables-restore", "iptables-save", "sysctl", "dnsmasq")

UDHCPC_SCRIPT = """#!/bin/sh
case "$1" in
  deconfig) ip -4 addr flush dev "$interface"; ip link set dev "$interface" up ;;
  bound|renew)
    ip -4 addr flush dev "$interface"
    ip addr add "$ip/$mask" dev "$interface"
    if [ -n "$router" ]; then ip route replace default via "${router%% *}" dev "$interface"; fi
    [ -n "$OPTIONS_DIR" ] && printf '%s' "$dns" > "$OPTIONS_DIR/dns"
    [ -n "$OPTIONS_DIR" ] && printf '%s' "$domain" > "$OPTIONS_DIR/domain"
    ;;
esac
exit 0
"""


def unavailable() -> str | None:
    """Why the Linux half cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "the Linux network driver needs root"
    missing = [tool for tool in (*TOOLS, "busybox") if shutil.which(tool) is None]
    if missing:
        return f"missing tools: {', '.join(missing)} (run tools/install.sh)"
    return None


def sh(*argv: str, netns: str = "", check: bool = True) -> subprocess.CompletedProcess[str]:
    """Run a command (inside a namespace if given) and return its result."""
    command = ["ip", "netns", "exec", netns, *argv] if netns else list(argv)
    result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed: {result.stdout}{result.stderr}")
    return result


class Lab:
    """Namespaces and links made for one test, all under one random name prefix."""

    def __init__(self, work_dir: Path) -> None:
        self.prefix = f"t{secrets.token_hex(1)}"
        self.work_dir = work_dir
        self.count = 0
        # A random egress netblock 192.168.240-255.0/24 and virtual netblocks in 10/8.
        self.egress_net = f"192.168.{240 + secrets.randbelow(16)}"
        self.inner_octet = 100 + secrets.randbelow(100)
        self.script = work_dir / "udhcpc.sh"
        self.script.write_text(UDHCPC_SCRIPT)
        self.script.chmod(0o755)

    def netblock(self, index: int) -> str:
        """The third octet's prefix of virtual network number index (10.x.index)."""
        return f"10.{self.inner_octet}.{index}"

    def _next(self) -> int:
        self.count += 1
        return self.count

    def namespace(self, role: str) -> str:
        """A new namespace with its loopback up."""
        name = f"{self.prefix}-{role}-{self._next()}"
        sh("ip", "netns", "add", name)
        sh("ip", "-n", name, "link", "set", "lo", "up")
        return name

    def attach(
        self, netns: str, bridge: str, mac: str = "", address: str = "", mtu: int = 1450
    ) -> str:
        """Plug netns into bridge with a veth (``eth0`` inside, with mac/address if given)."""
        outer = f"{self.prefix}x{self._next()}"
        sh("ip", "link", "add", outer, "mtu", str(mtu), "type", "veth",
           "peer", "name", "eth0", "mtu", str(mtu), "netns", netns)  # fmt: skip
        sh("ip", "link", "set", "dev", outer, "master", bridge, "up")
        if mac:
            sh("ip", "-n", netns, "link", "set", "dev", "eth0", "address", mac)
        sh("ip", "-n", netns, "link", "set", "dev", "eth0", "up")
        if address:
            sh("ip", "-n", netns, "addr", "add", address, "dev", "eth0")
        return outer

    def guest(self, bridge: str, mac: str) -> str:
        """A namespace standing in for a guest with one interface on bridge."""
        netns = self.namespace("guest")
        self.attach(netns, bridge, mac=mac)
        return netns

    def dhcp(self, netns: str, tries: int = 4) -> str | None:
        """Ask for a lease on eth0 with busybox udhcpc; the address it configured, if any."""
        options = self.work_dir / f"options-{netns}"
        options.mkdir(exist_ok=True)
        sh("env", f"OPTIONS_DIR={options}", "busybox", "udhcpc", "-f", "-n", "-q",
           "-t", str(tries), "-T", "1", "-A", "1",
           "-s", str(self.script), "-i", "eth0", netns=netns, check=False)  # fmt: skip
        return self.address(netns)

    def dhcp_option(self, netns: str, name: str) -> str:
        """What the last lease of netns said for an option udhcpc exports (dns, domain)."""
        path = self.work_dir / f"options-{netns}" / name
        return path.read_text() if path.exists() else ""

    def resolve(self, netns: str, name: str, server: str) -> str | None:
        """The IPv4 address server answers for name, asked from netns (None: no answer)."""
        out = sh("busybox", "nslookup", "-type=a", name, server, netns=netns, check=False)
        if out.returncode != 0:
            return None
        answers = out.stdout.split("Name:", 1)[1] if "Name:" in out.stdout else ""
        found = re.search(r"Address(?: \d+)?:\s*(\d+\.\d+\.\d+\.\d+)", answers)
        return found.group(1) if found else None

    def address(self, netns: str, device: str = "eth0") -> str | None:
        """The first IPv4 address on a namespace's device."""
        out = sh("ip", "-4", "-o", "addr", "show", "dev", device, netns=netns).stdout
        found = re.search(r"inet (\d+\.\d+\.\d+\.\d+)/", out)
        return found.group(1) if found else None

    def ping(self, netns: str, target: str, attempts: int = 3) -> bool:
        """Whether netns gets an echo reply from target (a few tries for ARP and FDB)."""
        for _ in range(attempts):
            if sh("busybox", "ping", "-c", "1", "-W", "2", target, netns=netns,
                  check=False).returncode == 0:  # fmt: skip
                return True
        return False

    def count_icmp_from(self, netns: str, source: str) -> None:
        """Start counting ICMP packets arriving in netns from source."""
        sh("iptables", "-w", "-A", "INPUT", "-p", "icmp", "-s", source, netns=netns)

    def icmp_count(self, netns: str, source: str) -> int:
        """How many ICMP packets from source netns has received since counting started."""
        out = sh("iptables-save", "-c", "-t", "filter", netns=netns).stdout
        for line in out.splitlines():
            if f"-A INPUT -s {source}/32 -p icmp" in line:
                return int(line[1:].split(":")[0])
        raise AssertionError(f"no counter for {source} in {netns}: {out}")

    def underlay_pair(self, first: str, second: str) -> tuple[str, str]:
        """Two namespaces joined by a veth pair holding first/30 and second/30 (underlays)."""
        one, two = self.namespace("underlay"), self.namespace("underlay")
        sh("ip", "-n", one, "link", "add", "ul0", "type", "veth", "peer", "name", "ul0",
           "netns", two)  # fmt: skip
        for netns, address in ((one, first), (two, second)):
            sh("ip", "-n", netns, "addr", "add", f"{address}/30", "dev", "ul0")
            sh("ip", "-n", netns, "link", "set", "dev", "ul0", "up")
        return one, two

    def leftovers(self) -> list[str]:
        """Links, namespaces and processes under the lab's prefix or work dir still here."""
        found: list[str] = []
        for line in sh("ip", "-o", "link", "show").stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(self.prefix):
                found.append(f"link {name}")
        for name in self.namespaces():
            found.append(f"netns {name}")
        found += [f"process {pid}" for pid in self.processes()]
        return found

    def namespaces(self) -> list[str]:
        """The lab's namespaces (and any the drivers under its prefix made)."""
        folder = Path("/run/netns")
        names = [p.name for p in folder.iterdir()] if folder.exists() else []
        return sorted(name for name in names if name.startswith(self.prefix))

    def processes(self) -> list[int]:
        """Processes whose command line names the lab's work dir (dnsmasq)."""
        found = []
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            try:
                cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if str(self.work_dir) in cmdline and entry.name != str(os.getpid()):
                found.append(int(entry.name))
        return found

    def cleanup(self) -> None:
        """Delete everything under the prefix: processes, namespaces, links."""
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        for name in self.namespaces():
            for number in sh("ip", "netns", "pids", name, check=False).stdout.split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(number), signal.SIGKILL)
            sh("ip", "netns", "del", name, check=False)
        for line in sh("ip", "-o", "link", "show").stdout.splitlines():
            name = line.split(":")[1].strip().split("@")[0]
            if name.startswith(self.prefix):
                sh("ip", "link", "del", "dev", name, check=False)
        deadline = time.monotonic() + 5
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.05)
