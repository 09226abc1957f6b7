"""Checks on a NetworkConfig shared by every driver, so bad input fails the same way.

A config that fails here raises a NetworkError that is not retryable, before
the driver changes anything on the node.
"""

from __future__ import annotations

import ipaddress
import re
import uuid as uuidlib
from dataclasses import dataclass

from nodeagent.network.protocol import NetworkConfig, NetworkError

MAC_PATTERN = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
HOSTNAME_PATTERN = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAX_VNI = 2**24 - 1
MIN_MTU, MAX_MTU = 576, 9000
MAX_PREFIX = 29


@dataclass(frozen=True)
class Checked:
    """The parsed parts of a valid config."""

    netblock: ipaddress.IPv4Network
    gateway: ipaddress.IPv4Address
    # The namespace's egress address and prefix; None: no egress veth at all.
    egress: ipaddress.IPv4Interface | None


def invalid(message: str) -> NetworkError:
    """A NetworkError for bad input: trying again will not help."""
    return NetworkError(message, retryable=False)


def check_uuid(network_uuid: str) -> str:
    """The UUID itself, or NetworkError: it names folders, so nothing else gets through."""
    try:
        parsed = uuidlib.UUID(network_uuid)
    except (ValueError, AttributeError, TypeError):
        raise invalid(f"network uuid {network_uuid!r} is not a UUID") from None
    if str(parsed) != network_uuid:
        raise invalid(f"network uuid {network_uuid!r} is not in canonical (lower-case) form")
    return network_uuid


def dhcp_hostname(hostname: str) -> str:
    """The hostname if dnsmasq will take it as one DNS label, else empty (none is sent)."""
    return hostname if HOSTNAME_PATTERN.match(hostname) else ""


def dns_name(name: str) -> bool:
    """Whether name is a DNS name dnsmasq takes: dot-separated valid labels, 253 at most."""
    labels = name.split(".")
    return len(name) <= 253 and all(HOSTNAME_PATTERN.match(label) for label in labels)


def _address(text: str, what: str) -> ipaddress.IPv4Address:
    try:
        return ipaddress.IPv4Address(text)
    except ValueError:
        raise invalid(f"{what} {text!r} is not an IPv4 address") from None


def check(config: NetworkConfig) -> Checked:
    """Parse and check a config; NetworkError (not retryable) says what is wrong."""
    check_uuid(config.uuid)
    if not 1 <= config.vni <= MAX_VNI:
        raise invalid(f"vni {config.vni} is outside 1..{MAX_VNI}")
    if not MIN_MTU <= config.mtu <= MAX_MTU:
        raise invalid(f"mtu {config.mtu} is outside {MIN_MTU}..{MAX_MTU}")
    try:
        netblock = ipaddress.IPv4Network(config.netblock)
    except ValueError:
        raise invalid(f"netblock {config.netblock!r} is not an IPv4 network") from None
    if netblock.prefixlen > MAX_PREFIX:
        raise invalid(f"netblock {config.netblock} is smaller than a /{MAX_PREFIX}")
    hosts = (netblock.network_address, netblock.broadcast_address)
    gateway = _address(config.gateway, "gateway")
    if gateway not in netblock or gateway in hosts:
        raise invalid(f"gateway {gateway} is not a host address of {netblock}")
    macs: set[str] = set()
    addresses: set[ipaddress.IPv4Address] = set()
    for lease in config.leases:
        if not MAC_PATTERN.match(lease.mac.lower()):
            raise invalid(f"lease MAC {lease.mac!r} is not a MAC address")
        address = _address(lease.address, "lease address")
        if address not in netblock or address in hosts or address == gateway:
            raise invalid(f"lease address {address} is not a free host address of {netblock}")
        if lease.mac.lower() in macs or address in addresses:
            raise invalid(f"lease {lease.mac} {address} repeats a MAC or an address")
        macs.add(lease.mac.lower())
        addresses.add(address)
    for peer in config.peers:
        _address(peer, "peer")
    egress = None
    if config.egress_address and config.provide_nat and config.services_here:
        try:
            egress = ipaddress.IPv4Interface(config.egress_address)
        except ValueError:
            raise invalid(
                f"egress address {config.egress_address!r} is not address/prefix"
            ) from None
        if "/" not in config.egress_address:
            raise invalid(f"egress address {config.egress_address!r} needs a prefix length")
        if egress.ip in netblock:
            raise invalid(f"egress address {egress.ip} is inside the netblock {netblock}")
        if config.egress_gateway:
            egress_gateway = _address(config.egress_gateway, "egress gateway")
            if egress_gateway not in egress.network or egress_gateway == egress.ip:
                raise invalid(f"egress gateway {egress_gateway} is not a neighbour in {egress}")
    floating: set[ipaddress.IPv4Address] = set()
    for entry in config.floating:
        address = _address(entry.address, "floating address")
        inner = _address(entry.inner_address, "floating inner address")
        if inner not in netblock or inner in hosts:
            raise invalid(f"floating inner address {inner} is not a host address of {netblock}")
        if address in netblock or address in floating or (egress and address == egress.ip):
            raise invalid(f"floating address {address} is repeated or not outside the netblock")
        floating.add(address)
    if config.provide_dns:
        if not dns_name(config.dns_domain):
            raise invalid(f"DNS domain {config.dns_domain!r} is not a DNS name")
        for server in config.dns_upstream:
            try:
                ipaddress.ip_address(server)
            except ValueError:
                raise invalid(f"DNS upstream {server!r} is not an IP address") from None
    if config.floating and config.services_here and egress is None:
        raise invalid("floating addresses need provide_nat and an egress address")
    return Checked(netblock=netblock, gateway=gateway, egress=egress)
