"""Create-request validation: defaults applied, bad input refused with a reason."""

from __future__ import annotations

import pytest

from controlplane.errors import InvalidArgument
from controlplane.model import DiskSpec, InstanceSpec, NetworkSpec
from controlplane.validation import check_spec


def spec(**kw: object) -> InstanceSpec:
    base: dict[str, object] = {"name": "vm", "cpus": 1, "memory": 512, "disks": (DiskSpec(1),)}
    base.update(kw)
    return InstanceSpec(**base)  # type: ignore[arg-type]


def test_defaults_are_applied() -> None:
    """Bus, device type, NIC model, video and configdrive get Shaken Fist's defaults."""
    checked = check_spec(spec(networks=(NetworkSpec("net1"),)))
    assert checked.disks[0] == DiskSpec(1, "", "virtio", "disk")
    assert checked.networks[0].model == "virtio"
    assert (checked.video.model, checked.video.memory, checked.video.vdi) == (
        "cirrus",
        16384,
        "spice",
    )
    assert checked.configdrive == "openstack-disk"


def test_ide_is_refused_with_the_reason() -> None:
    """The ide bus is refused, saying it was removed for its poor performance."""
    with pytest.raises(InvalidArgument, match="performance"):
        check_spec(spec(disks=(DiskSpec(1, bus="ide"),)))


def test_mac_is_normalised_to_lower_case() -> None:
    """MAC addresses are accepted in any case and stored in lower case."""
    checked = check_spec(spec(networks=(NetworkSpec("net1", macaddress="02:00:00:EA:3A:28"),)))
    assert checked.networks[0].macaddress == "02:00:00:ea:3a:28"


@pytest.mark.parametrize(
    "bad",
    [
        {"name": "12345678-1234-1234-1234-123456789012"},
        {"disks": (DiskSpec(0),)},
        {"disks": (DiskSpec(1, type="cdrom"),)},
        {"disks": (DiskSpec(-1, base="x"),)},
        {"configdrive": "floppy"},
        {"side_channels": ("has space",)},
        {"networks": (NetworkSpec(network_uuid="not a uuid or name"),)},
        {"networks": (NetworkSpec(),)},
    ],
)
def test_more_bad_input(bad: dict[str, object]) -> None:
    """Names like UUIDs, blank disks without size, cdroms without base and the like are refused."""
    with pytest.raises(InvalidArgument):
        check_spec(spec(**bad))
