"""The node's view of an instance: the stored spec turned into a DomainRequest."""

from __future__ import annotations

from common.nodewire.domain import DiskRequest, NetworkRequest, NicRequest, VideoRequest
from controlplane.domainreq import domain_request
from controlplane.model import DiskSpec, Instance, InstanceSpec, NetworkSpec, Nic, VideoSpec

UUID = "6f1c1a52-8e0c-4c35-9d43-2f6d1b7c0a11"


def instance() -> Instance:
    """A placed instance with a disk, a network, an interface and metadata."""
    spec = InstanceSpec(
        name="web-1",
        cpus=2,
        memory=2048,
        disks=(DiskSpec(8, "debian:12", "virtio", "disk"),),
        networks=(NetworkSpec("net-1", "02:00:00:ea:3a:28", "10.0.0.5", "e1000", True),),
        video=VideoSpec("virtio", 32768, "vnc"),
        metadata={"from": "the request"},
        side_channels=("sf-agent",),
        uefi=True,
    )
    return Instance(
        uuid=UUID,
        namespace="team-a",
        spec=spec,
        metadata={"from": "the instance", "count": 3},
        interfaces=(Nic("nic-1", "net-1", "02:00:00:ea:3a:28", "10.0.0.5", "e1000", 0),),
    )


def test_domain_request_carries_the_spec_in_the_wire_spelling() -> None:
    """Memory becomes memory_mb, macaddress becomes mac, and disks and video carry over."""
    request = domain_request(instance())
    assert (request.uuid, request.name, request.namespace) == (UUID, "web-1", "team-a")
    assert (request.cpus, request.memory_mb) == (2, 2048)
    assert request.disks == (DiskRequest(8, "debian:12", "virtio", "disk"),)
    assert request.networks == (NetworkRequest("net-1", "02:00:00:ea:3a:28", "10.0.0.5", "e1000"),)
    assert request.video == VideoRequest("virtio", 32768, "vnc")
    assert request.side_channels == ("sf-agent",) and request.uefi


def test_domain_request_has_the_instances_metadata_and_interfaces() -> None:
    """The node builds from the instance's current metadata and its interfaces in order."""
    request = domain_request(instance())
    assert request.metadata == {"from": "the instance", "count": 3}
    assert request.interfaces == (
        NicRequest("nic-1", "net-1", "02:00:00:ea:3a:28", "10.0.0.5", "e1000", 0),
    )


def test_a_network_with_dns_gives_the_config_drive_its_server_and_domain() -> None:
    """An interface stored with its network's DNS passes server and domain to the drive."""
    base = instance()
    nic = Nic(
        "nic-1",
        "net-1",
        "02:00:00:ea:3a:28",
        "10.0.0.5",
        "e1000",
        0,
        dns_server="10.0.0.1",
        dns_domain="team-a.minicloud",
    )
    request = domain_request(base.with_changes(interfaces=(nic,)))
    (network,) = request.networks
    assert (network.dns_servers, network.dns_domain) == (("10.0.0.1",), "team-a.minicloud")
