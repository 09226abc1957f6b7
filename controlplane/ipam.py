"""Address and MAC rules for virtual networks: pure functions, no I/O.

A netblock is an IPv4 CIDR of at least /29 (a /30 leaves too few addresses
for a gateway and guests). Its network address, gateway (the first usable
address) and broadcast address are reserved; interfaces get any other
address, at random or as requested. MAC addresses are locally administered
``02:00:00:xx:xx:xx``. The floating pool is a netblock too: its first usable
address is the egress gateway on every node's egress bridge.
"""

from __future__ import annotations

import ipaddress
import random
import re
from collections.abc import Collection

from controlplane.errors import InvalidArgument, ResourceExhausted

MIN_PREFIX = 29
MAC_PREFIX = "02:00:00"
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
# Random picks tried before walking the netblock in order.
RANDOM_TRIES = 64


def parse_netblock(text: str) -> ipaddress.IPv4Network:
    """A netblock as given by a caller (host bits are cleared), or InvalidArgument."""
    try:
        net = ipaddress.ip_network(text.strip(), strict=False)
    except ValueError as exc:
        raise InvalidArgument(f"cannot parse netblock {text!r}: {exc}") from exc
    if not isinstance(net, ipaddress.IPv4Network):
        raise InvalidArgument(f"netblock {text!r} is not IPv4; only IPv4 networks are supported")
    if net.prefixlen > MIN_PREFIX:
        raise InvalidArgument(
            f"network is below minimum size of /{MIN_PREFIX}: {net} has "
            f"{net.num_addresses} addresses"
        )
    return net


def gateway(net: ipaddress.IPv4Network) -> str:
    """The network's gateway: its first usable address."""
    return str(net.network_address + 1)


def reserved(net: ipaddress.IPv4Network) -> dict[str, str]:
    """Address -> type of the addresses no interface may have."""
    return {
        str(net.network_address): "network",
        gateway(net): "gateway",
        str(net.broadcast_address): "broadcast",
    }


def check_address(net: ipaddress.IPv4Network, text: str) -> str:
    """A requested address, if it is an IPv4 address inside the netblock (else InvalidArgument)."""
    try:
        address = ipaddress.IPv4Address(text.strip())
    except ValueError as exc:
        raise InvalidArgument(f"{text!r} is not an IPv4 address") from exc
    if address not in net:
        raise InvalidArgument(f"address {address} is not in netblock {net}")
    return str(address)


def pick_address(
    net: ipaddress.IPv4Network, taken: Collection[str], rng: random.Random, what: str = ""
) -> str:
    """A free address of the netblock, at random (ResourceExhausted when none is left)."""
    first = int(net.network_address) + 1
    last = int(net.broadcast_address) - 1
    for _ in range(RANDOM_TRIES):
        candidate = str(ipaddress.IPv4Address(rng.randint(first, last)))
        if candidate not in taken:
            return candidate
    for value in range(first, last + 1):
        candidate = str(ipaddress.IPv4Address(value))
        if candidate not in taken:
            return candidate
    raise ResourceExhausted(f"no free address left in {what or 'netblock'} {net}")


def check_mac(text: str) -> str:
    """A requested MAC address in lower case, or InvalidArgument."""
    mac = text.strip().lower().replace("-", ":")
    if not MAC_RE.match(mac):
        raise InvalidArgument(f"{text!r} is not a MAC address (expected xx:xx:xx:xx:xx:xx)")
    first = int(mac[:2], 16)
    if first & 1:
        raise InvalidArgument(f"{text!r} is a multicast MAC address; an interface needs unicast")
    if mac == "00:00:00:00:00:00":
        raise InvalidArgument("00:00:00:00:00:00 is not a usable MAC address")
    return mac


def random_mac(rng: random.Random) -> str:
    """A random locally administered MAC address, 02:00:00:xx:xx:xx."""
    tail = rng.getrandbits(24)
    return f"{MAC_PREFIX}:{tail >> 16:02x}:{(tail >> 8) & 0xFF:02x}:{tail & 0xFF:02x}"


def random_vni(rng: random.Random) -> int:
    """A random VXLAN network identifier (24 bits, 0 and the top value avoided)."""
    return rng.randint(1, (1 << 24) - 2)
