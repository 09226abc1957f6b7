"""What the node agent is asked to build: plain, immutable instance specs.

The link translates protobuf messages into these, so nothing below the link
imports generated code.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class DiskSpec:
    """One disk: size in GB (0: as the base), base image ref, bus and device type."""

    size_gb: int = 0
    base: str = ""
    bus: str = "virtio"
    type: str = "disk"


@dataclass(frozen=True)
class NetworkSpec:
    """One interface: its network, MAC and IPv4 address (when known) and NIC model."""

    network_uuid: str = ""
    macaddress: str = ""
    address: str = ""
    model: str = "virtio"


@dataclass(frozen=True)
class VideoSpec:
    """The video card model, its RAM in KiB and the remote display protocol."""

    model: str = "cirrus"
    memory: int = 16384
    vdi: str = "spice"


@dataclass(frozen=True)
class NicSpec:
    """One network interface: its MAC, NIC model and order on a network's bridge.

    ``bridge`` is filled in by the executor from the network driver just before
    the domain is defined (the control plane does not know bridge names).
    """

    uuid: str
    network_uuid: str
    mac: str
    ipv4: str = ""
    model: str = "virtio"
    order: int = 0
    bridge: str = ""


@dataclass(frozen=True)
class DomainSpec:
    """One instance as the hypervisor sees it."""

    uuid: str
    name: str
    namespace: str = "system"
    cpus: int = 1
    memory_mb: int = 1024
    disks: tuple[DiskSpec, ...] = ()
    video: VideoSpec = field(default_factory=VideoSpec)
    side_channels: tuple[str, ...] = ()
    networks: tuple[NetworkSpec, ...] = ()
    ssh_key: str = ""
    # Base64 text, as the API takes it; the config drive holds it decoded.
    user_data: str = ""
    metadata: dict[str, Any] = field(default_factory=dict)
    uefi: bool = False
    secure_boot: bool = False
    interfaces: tuple[NicSpec, ...] = ()
    # As the caller gave it (a node path or sf://blob/UUID); the executor hands
    # the hypervisor a local file path instead. Empty: the OVMF default.
    nvram_template: str = ""
    # "openstack-disk" or "none".
    configdrive: str = "openstack-disk"
