"""Create-request validation: defaults applied, bad input refused with a reason."""

from __future__ import annotations

import pytest

from controlplane.errors import InvalidArgument
from controlplane.model import DiskSpec, InstanceSpec, NetworkSpec
from controlplane.validation import MAX_INTERFACES, check_spec, machine_type


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


def test_interfaces_are_limited_so_a_create_fits_one_store_batch() -> None:
    """MAX_INTERFACES interfaces are accepted; one more is refused with the limit named."""
    check_spec(spec(networks=(NetworkSpec("net1"),) * MAX_INTERFACES))
    with pytest.raises(InvalidArgument, match=f"at most {MAX_INTERFACES} interfaces"):
        check_spec(spec(networks=(NetworkSpec("net1"),) * (MAX_INTERFACES + 1)))


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
        {"user_data": "not base64!"},
        {"user_data": "A" * (90 * 1024)},
        {"nvram_template": "/usr/share/OVMF/OVMF_VARS_4M.fd"},
        {"uefi": True, "nvram_template": "relative/path.fd"},
        {"side_channels": ("has space",)},
        {"networks": (NetworkSpec(network_uuid="not a uuid or name"),)},
        {"networks": (NetworkSpec(),)},
    ],
)
def test_more_bad_input(bad: dict[str, object]) -> None:
    """Names like UUIDs, blank disks without size, cdroms without base and the like are refused."""
    with pytest.raises(InvalidArgument):
        check_spec(spec(**bad))


def test_secure_boot_needs_uefi_with_a_clear_message() -> None:
    """Secure boot without UEFI is refused, saying so."""
    with pytest.raises(InvalidArgument, match="secure boot requires UEFI be enabled"):
        check_spec(spec(secure_boot=True))


def test_user_data_is_kept_as_base64_without_whitespace() -> None:
    """Base64 user data is accepted (line breaks dropped) and stored as base64."""
    checked = check_spec(spec(user_data="I2Nsb3VkLWNv\nbmZpZwo="))
    assert checked.user_data == "I2Nsb3VkLWNvbmZpZwo="


def test_machine_type_is_q35_only_for_secure_boot() -> None:
    """Secure boot instances get q35; every other instance gets pc."""
    assert machine_type(spec()) == "pc"
    assert machine_type(spec(uefi=True)) == "pc"
    assert machine_type(spec(uefi=True, secure_boot=True)) == "q35"
