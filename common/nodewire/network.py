"""What a node is told to make of one virtual network (the EnsureNetwork command's payload)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Lease:
    """One DHCP reservation: this MAC gets this address (and hostname)."""

    mac: str
    address: str
    hostname: str = ""


@dataclass(frozen=True)
class Floating:
    """A floating address, DNATed to an interface's address inside the network."""

    address: str
    inner_address: str


@dataclass(frozen=True)
class NetworkConfig:
    """Everything a node needs to carry one network."""

    uuid: str
    vni: int
    # e.g. "10.0.0.0/24"; the gateway is its first usable address.
    netblock: str
    gateway: str
    provide_dhcp: bool = True
    provide_nat: bool = True
    # Run the namespace (gateway, dnsmasq, NAT, floating addresses) on this node.
    services_here: bool = True
    leases: tuple[Lease, ...] = ()
    # Underlay addresses of the other nodes carrying this network.
    peers: tuple[str, ...] = ()
    # The namespace's address on the egress bridge (NAT source), with its prefix
    # length, e.g. "192.168.240.5/24"; empty: no egress at all.
    egress_address: str = ""
    egress_gateway: str = ""
    floating: tuple[Floating, ...] = ()
    mtu: int = 1450
    # dnsmasq answers the leases' hostnames as HOSTNAME.dns_domain (NAMESPACE.ZONE)
    # and is the DNS server DHCP hands out.
    provide_dns: bool = False
    dns_domain: str = ""
    # Servers other names are forwarded to; empty: none (nothing leaves the network).
    dns_upstream: tuple[str, ...] = ()
