"""The node's view of one instance: what it builds a domain, disks and config drive from."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DiskRequest:
    """One disk: size in GB (0: as the base), base image ref, bus and device type."""

    size_gb: int = 0
    base: str = ""
    bus: str = "virtio"
    type: str = "disk"


@dataclass(frozen=True)
class NetworkRequest:
    """One requested network as the config drive describes it: MAC, IPv4 address, NIC model.

    ``dns_servers`` and ``dns_domain`` are the network's own DNS (its gateway
    and ``NAMESPACE.ZONE``) when it provides DNS; empty otherwise.
    """

    network_uuid: str = ""
    mac: str = ""
    address: str = ""
    model: str = "virtio"
    dns_servers: tuple[str, ...] = ()
    dns_domain: str = ""


@dataclass(frozen=True)
class VideoRequest:
    """The video card model, its RAM in KiB and the remote display protocol."""

    model: str = "cirrus"
    memory: int = 16384
    vdi: str = "spice"


@dataclass(frozen=True)
class NicRequest:
    """One network interface: its MAC, NIC model and order on a network's bridge.

    ``bridge`` is filled in by the node's executor from the network driver just
    before the domain is defined (the control plane does not know bridge names).
    """

    uuid: str
    network_uuid: str
    mac: str
    ipv4: str = ""
    model: str = "virtio"
    order: int = 0
    bridge: str = ""


@dataclass(frozen=True)
class DomainRequest:
    """One instance as the hypervisor sees it."""

    uuid: str
    name: str
    namespace: str = "system"
    cpus: int = 1
    memory_mb: int = 1024
    disks: tuple[DiskRequest, ...] = ()
    video: VideoRequest = field(default_factory=VideoRequest)
    side_channels: tuple[str, ...] = ()
    networks: tuple[NetworkRequest, ...] = ()
    ssh_key: str = ""
    # Base64 text, as the API takes it; the config drive holds it decoded.
    user_data: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    uefi: bool = False
    secure_boot: bool = False
    interfaces: tuple[NicRequest, ...] = ()
    # As the caller gave it (a node path or sf://blob/UUID); the executor hands
    # the hypervisor a local file path instead. Empty: the OVMF default.
    nvram_template: str = ""
    # "openstack-disk" or "none".
    configdrive: str = "openstack-disk"
