"""What a node is asked to build for an instance: its stored spec as a wire DomainRequest.

The stored, validated ``InstanceSpec`` (with its schema upgrades) stays the
control plane's; this is the one place it becomes the node's view.
"""

from __future__ import annotations

from common.nodewire.domain import (
    DiskRequest,
    DomainRequest,
    NetworkRequest,
    NicRequest,
    VideoRequest,
)
from controlplane.model import Instance, NetworkSpec, Nic


def nic_request(nic: Nic) -> NicRequest:
    """What a node needs of one interface."""
    return NicRequest(nic.uuid, nic.network_uuid, nic.macaddr, nic.ipv4, nic.model, nic.order)


def _network_request(spec: NetworkSpec, nic: Nic | None) -> NetworkRequest:
    """A network as the config drive describes it, with its DNS when it provides some."""
    servers = (nic.dns_server,) if nic is not None and nic.dns_server else ()
    domain = nic.dns_domain if nic is not None else ""
    return NetworkRequest(
        spec.network_uuid, spec.macaddress, spec.address, spec.model, servers, domain
    )


def domain_request(instance: Instance) -> DomainRequest:
    """The instance as its node builds it: the request, with the instance's current metadata."""
    spec = instance.spec
    nics = {nic.macaddr: nic for nic in instance.interfaces}
    return DomainRequest(
        uuid=instance.uuid,
        name=spec.name,
        namespace=instance.namespace,
        cpus=spec.cpus,
        memory_mb=spec.memory,
        disks=tuple(DiskRequest(d.size_gb, d.base, d.bus, d.type) for d in spec.disks),
        video=VideoRequest(spec.video.model, spec.video.memory, spec.video.vdi),
        side_channels=spec.side_channels,
        networks=tuple(_network_request(n, nics.get(n.macaddress)) for n in spec.networks),
        ssh_key=spec.ssh_key,
        user_data=spec.user_data,
        metadata=dict(instance.metadata),
        uefi=spec.uefi,
        secure_boot=spec.secure_boot,
        interfaces=tuple(nic_request(n) for n in instance.interfaces),
        nvram_template=spec.nvram_template,
        configdrive=spec.configdrive,
    )
