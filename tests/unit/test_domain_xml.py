"""The domain XML builder (pure), plus the libvirt driver's pure mapping helpers."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from common.nodewire.domain import DomainRequest, NicRequest, VideoRequest
from nodeagent.hypervisor.domain_xml import (
    GUEST_AGENT_CHANNEL,
    METADATA_NS,
    OVMF_CODE,
    OVMF_CODE_SECBOOT,
    OVMF_VARS,
    OVMF_VARS_SECBOOT,
    QEMU_NS,
    build_domain_xml,
    channel_socket_path,
    domain_name,
    interface_macs,
    interface_xml,
    parse_domain_identity,
)
from nodeagent.hypervisor.protocol import HypervisorError, PreparedDisk

UUID = "6f1c1a52-8e0c-4c35-9d43-2f6d1b7c0a11"
SOCKETS = Path("/var/lib/minicloud/node/instances") / UUID
CONSOLE = SOCKETS / "console.log"


def spec(**overrides: Any) -> DomainRequest:
    """A small instance spec with any field overridden."""
    fields: dict[str, Any] = {"uuid": UUID, "name": "web-1", "namespace": "team-a"}
    fields.update(overrides)
    return DomainRequest(**fields)


def disk(name: str = "disk0.qcow2", **overrides: Any) -> PreparedDisk:
    """A prepared disk in the instance folder."""
    return PreparedDisk(path=SOCKETS / name, **overrides)


def build(
    domain: DomainRequest | None = None, disks: list[PreparedDisk] | None = None, **kwargs: Any
) -> ET.Element:
    """Build the XML and parse it back."""
    options: dict[str, Any] = {
        "console_log": CONSOLE,
        "domain_type": "qemu",
        "socket_dir": SOCKETS,
    }
    options.update(kwargs)
    xml = build_domain_xml(domain or spec(), [disk()] if disks is None else disks, **options)
    return ET.fromstring(xml)


def targets(root: ET.Element) -> list[tuple[str, str, str]]:
    """(device, target dev, target bus) of every disk, in order."""
    return [
        (d.get("device", ""), d.find("target").get("dev", ""), d.find("target").get("bus", ""))  # type: ignore[union-attr]
        for d in root.iterfind("devices/disk")
    ]


def test_names_the_domain_after_the_instance() -> None:
    """The domain is called mc-<uuid> and carries the instance UUID."""
    root = build()
    assert root.findtext("name") == f"mc-{UUID}" == domain_name(UUID)
    assert root.findtext("uuid") == UUID


def test_metadata_records_name_and_namespace() -> None:
    """Our metadata element holds the instance name and namespace under our URI."""
    root = build()
    instance = root.find(f"metadata/{{{METADATA_NS}}}instance")
    assert instance is not None
    assert instance.findtext(f"{{{METADATA_NS}}}name") == "web-1"
    assert instance.findtext(f"{{{METADATA_NS}}}namespace") == "team-a"


def test_identity_round_trips() -> None:
    """parse_domain_identity reads back what build_domain_xml wrote."""
    xml = build_domain_xml(
        spec(), [disk()], console_log=CONSOLE, domain_type="qemu", socket_dir=SOCKETS
    )
    identity = parse_domain_identity(xml)
    assert (identity.uuid, identity.name, identity.namespace) == (UUID, "web-1", "team-a")
    assert identity.cluster == ""


def test_the_domain_records_its_node_and_cluster() -> None:
    """The metadata names the node and the cluster that made the domain, read back as made."""
    xml = build_domain_xml(
        spec(),
        [disk()],
        console_log=CONSOLE,
        domain_type="qemu",
        socket_dir=SOCKETS,
        node_name="hv1",
        cluster_id="c0ffee",
    )
    identity = parse_domain_identity(xml)
    assert (identity.node, identity.cluster) == ("hv1", "c0ffee")


def test_unreadable_xml_raises() -> None:
    """Garbage XML raises HypervisorError rather than a parser exception."""
    with pytest.raises(HypervisorError):
        parse_domain_identity("<domain")


def test_memory_in_mib_and_vcpus() -> None:
    """Memory is given in MiB and the vCPU count is the spec's."""
    root = build(spec(cpus=3, memory_mb=2048))
    memory = root.find("memory")
    assert memory is not None and memory.get("unit") == "MiB" and memory.text == "2048"
    assert root.findtext("currentMemory") == "2048"
    assert root.findtext("vcpu") == "3"


@pytest.mark.parametrize("domain_type", ["kvm", "qemu"])
def test_domain_type(domain_type: str) -> None:
    """The domain type is the one asked for; KVM also gets the host CPU model."""
    root = build(domain_type=domain_type)
    assert root.get("type") == domain_type
    assert (root.find("cpu") is not None) == (domain_type == "kvm")


def test_unknown_domain_type_raises() -> None:
    """Only kvm and qemu are domain types."""
    with pytest.raises(HypervisorError, match="domain type"):
        build(domain_type="xen")


def test_invalid_sizes_raise() -> None:
    """Zero vCPUs or zero memory cannot be built."""
    with pytest.raises(HypervisorError):
        build(spec(cpus=0))
    with pytest.raises(HypervisorError):
        build(spec(memory_mb=0))


def test_lifecycle_actions_allow_fake_reboot() -> None:
    """Power-off destroys, reboot restarts (libvirt's fake reboot), a crash destroys."""
    root = build()
    assert root.findtext("on_poweroff") == "destroy"
    assert root.findtext("on_reboot") == "restart"
    assert root.findtext("on_crash") == "destroy"


def test_acpi_is_enabled() -> None:
    """ACPI is on, so the guest sees power-button presses."""
    assert build().find("features/acpi") is not None


def test_virtio_disks_are_vd_devices() -> None:
    """Virtio disks are vda, vdb, ... in order, with their format."""
    root = build(disks=[disk("a.qcow2"), disk("b.raw", format="raw")])
    assert targets(root) == [("disk", "vda", "virtio"), ("disk", "vdb", "virtio")]
    drivers = [d.get("type") for d in root.iterfind("devices/disk/driver")]
    assert drivers == ["qcow2", "raw"]
    sources = [s.get("file") for s in root.iterfind("devices/disk/source")]
    assert sources == [str(SOCKETS / "a.qcow2"), str(SOCKETS / "b.raw")]


def test_only_the_first_disk_boots() -> None:
    """The first disk has boot order 1 and no other disk has a boot element."""
    root = build(disks=[disk("a"), disk("b"), disk("c")])
    boots = [d.find("boot") for d in root.iterfind("devices/disk")]
    assert boots[0] is not None and boots[0].get("order") == "1"
    assert boots[1:] == [None, None]
    assert root.find("os/boot") is None


def test_sd_buses_share_one_sequence() -> None:
    """SATA, SCSI and USB disks are sda, sdb, sdc while virtio keeps its own letters."""
    root = build(
        disks=[
            disk("a", bus="sata"),
            disk("b", bus="virtio"),
            disk("c", bus="scsi"),
            disk("d", bus="usb"),
        ]
    )
    assert targets(root) == [
        ("disk", "sda", "sata"),
        ("disk", "vda", "virtio"),
        ("disk", "sdb", "scsi"),
        ("disk", "sdc", "usb"),
    ]


def test_scsi_disks_get_a_virtio_scsi_controller() -> None:
    """A SCSI disk brings one virtio-scsi controller; other buses bring none."""
    root = build(disks=[disk("a", bus="scsi"), disk("b", bus="scsi")])
    controllers = [c.get("model") for c in root.iterfind("devices/controller[@type='scsi']")]
    assert controllers == ["virtio-scsi"]
    assert build().find("devices/controller[@type='scsi']") is None


def usb_models(root: ET.Element) -> list[str | None]:
    """The model of every USB controller the domain XML names."""
    return [c.get("model") for c in root.iterfind("devices/controller[@type='usb']")]


def test_no_usb_controller_without_a_usb_disk() -> None:
    """Without a USB disk the domain says it has no USB controller at all (model none)."""
    assert usb_models(build()) == ["none"]
    assert usb_models(build(disks=[])) == ["none"]
    assert usb_models(build(disks=[disk("a", bus="sata"), disk("b", bus="scsi")])) == ["none"]


@pytest.mark.parametrize("device", ["disk", "cdrom"])
def test_a_usb_disk_brings_the_default_usb_controller(device: str) -> None:
    """A USB disk or cdrom leaves the USB controller to libvirt, which adds its default."""
    root = build(disks=[disk("a"), disk("b", bus="usb", device=device, format="raw")])
    assert usb_models(root) == []


def test_no_memory_balloon() -> None:
    """The memory balloon is switched off (libvirt would add a virtio one)."""
    balloons = build().findall("devices/memballoon")
    assert [b.get("model") for b in balloons] == ["none"]


@pytest.mark.parametrize("vdi", ["vnc", "spice", "spiceconcurrent"])
def test_only_the_devices_asked_for(vdi: str) -> None:
    """A plain instance has its disk, console, video, display and agent channel, nothing else."""
    root = build(spec(video=VideoRequest(vdi=vdi)))
    devices = root.find("devices")
    assert devices is not None
    assert sorted({d.tag for d in devices}) == [
        "channel",
        "console",
        "controller",
        "disk",
        "graphics",
        "memballoon",
        "serial",
        "video",
    ]
    assert len(devices.findall("serial")) == 1
    assert devices.find("input") is None  # no tablet (libvirt's PS/2 pair is implicit)
    assert devices.find("parallel") is None and devices.find("sound") is None
    assert devices.find("redirdev") is None and devices.find("smartcard") is None
    assert [c.get("type") for c in devices.iterfind("channel")] == ["unix"]  # no spicevmc


def test_cdrom_is_read_only_on_sata() -> None:
    """A cdrom is a read-only SATA cdrom device whatever bus was asked for."""
    for bus in ("virtio", "sata", "nvme"):
        root = build(disks=[disk("iso", bus=bus, device="cdrom", format="raw")])
        assert targets(root) == [("cdrom", "sda", "sata")]
        assert root.find("devices/disk/readonly") is not None


@pytest.mark.parametrize("bus", ["scsi", "usb"])
def test_cdrom_keeps_scsi_and_usb(bus: str) -> None:
    """A cdrom on SCSI or USB stays there."""
    root = build(disks=[disk("iso", bus=bus, device="cdrom", format="raw")])
    assert targets(root) == [("cdrom", "sda", bus)]


def test_nvme_disks_become_nvme_devices_through_qemu_override() -> None:
    """An nvme disk is a virtio disk whose QEMU device is overridden to nvme, with a serial."""
    root = build(disks=[disk("a", bus="nvme"), disk("b", bus="nvme")])
    assert targets(root) == [("disk", "vda", "virtio"), ("disk", "vdb", "virtio")]
    aliases = [a.get("name") for a in root.iterfind("devices/disk/alias")]
    serials = [d.findtext("serial") for d in root.iterfind("devices/disk")]
    assert aliases == ["ua-mc-nvme0", "ua-mc-nvme1"]
    assert all(serials)
    overridden = root.findall(f"{{{QEMU_NS}}}override/{{{QEMU_NS}}}device")
    assert [d.get("alias") for d in overridden] == aliases
    for device in overridden:
        prop = device.find(f"{{{QEMU_NS}}}frontend/{{{QEMU_NS}}}property")
        assert prop is not None
        assert (prop.get("name"), prop.get("value")) == ("driver", "nvme")


def test_no_qemu_namespace_without_need() -> None:
    """A plain spec uses no QEMU command-line or override extensions."""
    xml = build_domain_xml(
        spec(), [disk()], console_log=CONSOLE, domain_type="qemu", socket_dir=SOCKETS
    )
    assert QEMU_NS not in xml


def test_many_disks_get_two_letter_names() -> None:
    """The 27th virtio disk is vdaa, as the Linux kernel would name it."""
    root = build(disks=[disk(f"d{i}") for i in range(28)])
    names = [t[1] for t in targets(root)]
    assert names[25:] == ["vdz", "vdaa", "vdab"]


@pytest.mark.parametrize(
    ("field", "value"), [("bus", "ide"), ("device", "floppy")], ids=["bus", "device"]
)
def test_unknown_disk_bus_or_device_raises(field: str, value: str) -> None:
    """Buses and device types outside the supported set are refused."""
    with pytest.raises(HypervisorError, match=value):
        build(disks=[disk(**{field: value})])


def test_no_disks_is_allowed() -> None:
    """A domain without disks builds (it would network-boot or sit in the BIOS)."""
    assert build(disks=[]).find("devices/disk") is None


def test_serial_console_is_logged() -> None:
    """The serial console is a pty whose output is appended to the console log."""
    root = build()
    log = root.find("devices/serial[@type='pty']/log")
    assert log is not None
    assert log.get("file") == str(CONSOLE) and log.get("append") == "on"
    console = root.find("devices/console/target")
    assert console is not None and console.get("type") == "serial"


@pytest.mark.parametrize("model", ["cirrus", "vga", "qxl"])
def test_video_model_and_memory(model: str) -> None:
    """The video model and its RAM in KiB come from the VideoRequest."""
    root = build(spec(video=VideoRequest(model=model, memory=32768)))
    element = root.find("devices/video/model")
    assert element is not None
    assert (element.get("type"), element.get("vram")) == (model, "32768")


def test_virtio_video_has_no_vram() -> None:
    """Models that do not take a vram attribute get none."""
    element = build(spec(video=VideoRequest(model="virtio"))).find("devices/video/model")
    assert element is not None and element.get("vram") is None


def test_unknown_video_model_raises() -> None:
    """A video model libvirt does not know is refused."""
    with pytest.raises(HypervisorError, match="video model"):
        build(spec(video=VideoRequest(model="voodoo")))


@pytest.mark.parametrize(("vdi", "kind"), [("vnc", "vnc"), ("spice", "spice")])
def test_graphics_listen_on_localhost_by_default(vdi: str, kind: str) -> None:
    """VNC or SPICE with an automatic port, listening on 127.0.0.1 unless told otherwise."""
    root = build(spec(video=VideoRequest(vdi=vdi)))
    graphics = root.find("devices/graphics")
    assert graphics is not None
    assert (graphics.get("type"), graphics.get("autoport")) == (kind, "yes")
    listen = graphics.find("listen")
    assert listen is not None and listen.get("address") == "127.0.0.1"
    other = build(spec(video=VideoRequest(vdi=vdi)), listen_address="0.0.0.0").find(
        "devices/graphics/listen"
    )
    assert other is not None and other.get("address") == "0.0.0.0"


def test_spiceconcurrent_allows_several_clients() -> None:
    """spiceconcurrent is SPICE with SPICE_DEBUG_ALLOW_MC=1 in QEMU's environment."""
    root = build(spec(video=VideoRequest(vdi="spiceconcurrent")))
    graphics = root.find("devices/graphics")
    assert graphics is not None and graphics.get("type") == "spice"
    env = root.find(f"{{{QEMU_NS}}}commandline/{{{QEMU_NS}}}env")
    assert env is not None
    assert (env.get("name"), env.get("value")) == ("SPICE_DEBUG_ALLOW_MC", "1")


def test_unknown_display_protocol_raises() -> None:
    """Only vnc, spice and spiceconcurrent are display protocols."""
    with pytest.raises(HypervisorError, match="display"):
        build(spec(video=VideoRequest(vdi="rdp")))


def test_side_channels_and_guest_agent_are_unix_sockets() -> None:
    """Each side channel and the guest agent get a virtio port backed by a socket."""
    root = build(spec(side_channels=("sf-agent", GUEST_AGENT_CHANNEL)))
    channels = [
        (c.find("target").get("name"), c.find("source").get("path"), c.find("source").get("mode"))  # type: ignore[union-attr]
        for c in root.iterfind("devices/channel[@type='unix']")
    ]
    assert channels == [
        ("sf-agent", str(channel_socket_path(SOCKETS, "sf-agent")), "bind"),
        (GUEST_AGENT_CHANNEL, str(channel_socket_path(SOCKETS, GUEST_AGENT_CHANNEL)), "bind"),
    ]
    assert all(str(path).startswith(str(SOCKETS) + "/") for _, path, _ in channels)


def test_guest_agent_channel_is_always_there() -> None:
    """Even without side channels the qemu guest agent channel exists."""
    names = [t.get("name") for t in build().iterfind("devices/channel/target")]
    assert names == [GUEST_AGENT_CHANNEL]


@pytest.mark.parametrize("name", ["../escape", "a b", "", "x" * 65])
def test_bad_channel_names_raise(name: str) -> None:
    """Channel names that are not plain port names are refused."""
    with pytest.raises(HypervisorError, match="side channel"):
        build(spec(side_channels=(name,)))


def test_too_long_socket_path_raises() -> None:
    """A socket folder that makes paths longer than unix sockets allow is refused."""
    with pytest.raises(HypervisorError, match="socket path"):
        build(socket_dir=Path("/" + "d" * 90))


def test_bios_by_default() -> None:
    """Without uefi there is no loader or NVRAM and the machine is pc."""
    root = build()
    assert root.find("os/loader") is None and root.find("os/nvram") is None
    os_type = root.find("os/type")
    assert os_type is not None and os_type.get("machine") == "pc"


def test_uefi_uses_ovmf_with_per_instance_nvram() -> None:
    """UEFI loads OVMF and keeps variables in a per-instance copy of the template."""
    root = build(spec(uefi=True))
    loader = root.find("os/loader")
    nvram = root.find("os/nvram")
    assert loader is not None and nvram is not None
    assert loader.text == str(OVMF_CODE) and loader.get("readonly") == "yes"
    assert loader.get("secure") == "no"
    assert nvram.get("template") == str(OVMF_VARS)
    assert nvram.text == str(SOCKETS / "nvram.fd")
    assert root.find("features/smm") is None


def test_nvram_path_can_be_given() -> None:
    """An explicit NVRAM path wins over the default in the socket folder."""
    nvram = build(spec(uefi=True), nvram_path=Path("/srv/vars.fd")).find("os/nvram")
    assert nvram is not None and nvram.text == "/srv/vars.fd"


def test_secure_boot_uses_q35_smm_and_enrolled_keys() -> None:
    """Secure boot needs q35, SMM, the secboot OVMF build and the Microsoft-key template."""
    root = build(spec(uefi=True, secure_boot=True))
    os_type = root.find("os/type")
    loader = root.find("os/loader")
    nvram = root.find("os/nvram")
    assert os_type is not None and os_type.get("machine") == "q35"
    assert loader is not None and loader.text == str(OVMF_CODE_SECBOOT)
    assert loader.get("secure") == "yes"
    assert nvram is not None and nvram.get("template") == str(OVMF_VARS_SECBOOT)
    smm = root.find("features/smm")
    assert smm is not None and smm.get("state") == "on"


def test_secure_boot_without_uefi_raises() -> None:
    """Secure boot without UEFI is refused."""
    with pytest.raises(HypervisorError, match="UEFI"):
        build(spec(secure_boot=True))


def test_nvram_template_of_the_instance_is_used() -> None:
    """An instance's own NVRAM template (a local file by now) replaces OVMF's."""
    nvram = build(spec(uefi=True, nvram_template="/srv/cache/blob-x")).find("os/nvram")
    assert nvram is not None and nvram.get("template") == "/srv/cache/blob-x"
    assert nvram.text == str(SOCKETS / "nvram.fd")


def test_config_drive_is_a_read_only_raw_second_disk() -> None:
    """A read-only raw disk after the boot disk is vdb, marked readonly, and not bootable."""
    drive = disk("config.iso", format="raw", readonly=True)
    root = build(disks=[disk(), drive])
    assert targets(root)[:2] == [("disk", "vda", "virtio"), ("disk", "vdb", "virtio")]
    second = root.findall("devices/disk")[1]
    assert second.find("readonly") is not None
    assert second.find("boot") is None
    driver = second.find("driver")
    assert driver is not None and driver.get("type") == "raw"
    source = second.find("source")
    assert source is not None and source.get("file") == str(SOCKETS / "config.iso")
    assert root.findall("devices/disk")[0].find("readonly") is None


# -- pure helpers of the libvirt driver (need the libvirt module, not the daemon) --


def test_probe_domain_type_honours_explicit_settings(tmp_path: Path) -> None:
    """kvm and qemu settings are returned as they are; other settings are refused."""
    driver = pytest.importorskip("nodeagent.hypervisor.libvirt_driver")
    assert driver.probe_domain_type("kvm", kvm_device=tmp_path / "none") == "kvm"
    assert driver.probe_domain_type("qemu") == "qemu"
    with pytest.raises(HypervisorError):
        driver.probe_domain_type("xen")


@pytest.mark.parametrize(
    ("device", "flags", "expected"),
    [
        (True, "fpu vme vmx sse", "kvm"),
        (True, "fpu svm sse", "kvm"),
        (True, "fpu vme sse", "qemu"),
        (False, "fpu vmx", "qemu"),
    ],
    ids=["vmx", "svm", "no-flags", "no-device"],
)
def test_probe_domain_type_auto(tmp_path: Path, device: bool, flags: str, expected: str) -> None:
    """auto picks KVM only when /dev/kvm is there and the CPU shows vmx or svm."""
    driver = pytest.importorskip("nodeagent.hypervisor.libvirt_driver")
    kvm = tmp_path / "kvm"
    if device:
        kvm.write_bytes(b"")
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nflags\t\t: {flags}\n\n")
    assert driver.probe_domain_type("auto", kvm_device=kvm, cpuinfo=cpuinfo) == expected


def test_event_mapping() -> None:
    """libvirt lifecycle events map to our power states and reason words."""
    libvirt = pytest.importorskip("libvirt")
    driver = pytest.importorskip("nodeagent.hypervisor.libvirt_driver")
    stopped = libvirt.VIR_DOMAIN_EVENT_STOPPED
    cases = {
        (stopped, libvirt.VIR_DOMAIN_EVENT_STOPPED_DESTROYED): ("off", "destroyed"),
        (stopped, libvirt.VIR_DOMAIN_EVENT_STOPPED_SHUTDOWN): ("off", "shutdown by guest"),
        (stopped, libvirt.VIR_DOMAIN_EVENT_STOPPED_CRASHED): ("crashed", "guest crashed"),
        (stopped, libvirt.VIR_DOMAIN_EVENT_STOPPED_FAILED): ("crashed", "QEMU process died"),
        (libvirt.VIR_DOMAIN_EVENT_CRASHED, 0): ("crashed", "guest panicked"),
        (libvirt.VIR_DOMAIN_EVENT_SUSPENDED, 0): ("paused", "paused"),
        (libvirt.VIR_DOMAIN_EVENT_RESUMED, 0): ("on", "unpaused"),
        (libvirt.VIR_DOMAIN_EVENT_STARTED, 0): ("on", "booted"),
        (libvirt.VIR_DOMAIN_EVENT_PMSUSPENDED, 0): ("paused", "suspended by guest to memory"),
        (libvirt.VIR_DOMAIN_EVENT_STARTED, 99): ("on", "started"),
    }
    for (event, detail), expected in cases.items():
        assert driver.event_to_state(event, detail) == expected
    for event in (
        libvirt.VIR_DOMAIN_EVENT_DEFINED,
        libvirt.VIR_DOMAIN_EVENT_UNDEFINED,
        libvirt.VIR_DOMAIN_EVENT_SHUTDOWN,
    ):
        assert driver.event_to_state(event, 0) is None


def test_state_mapping() -> None:
    """libvirt domain states map to on, off, paused and crashed as Shaken Fist maps them."""
    libvirt = pytest.importorskip("libvirt")
    driver = pytest.importorskip("nodeagent.hypervisor.libvirt_driver")
    power = driver.libvirt_state_to_power
    assert power(libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_RUNNING_BOOTED)[0] == "on"
    assert power(libvirt.VIR_DOMAIN_BLOCKED, 0)[0] == "on"
    assert power(libvirt.VIR_DOMAIN_NOSTATE, 0)[0] == "on"
    assert power(libvirt.VIR_DOMAIN_SHUTDOWN, 0)[0] == "on"
    assert power(libvirt.VIR_DOMAIN_PAUSED, libvirt.VIR_DOMAIN_PAUSED_USER)[0] == "paused"
    assert power(libvirt.VIR_DOMAIN_PMSUSPENDED, 0)[0] == "paused"
    assert power(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED) == (
        "off",
        "destroyed",
    )
    assert power(libvirt.VIR_DOMAIN_SHUTOFF, libvirt.VIR_DOMAIN_SHUTOFF_CRASHED)[0] == "crashed"
    assert power(libvirt.VIR_DOMAIN_CRASHED, 0)[0] == "crashed"


def nic(order: int, model: str = "virtio", bridge: str = "mcbr-x") -> NicRequest:
    """A NIC on a bridge."""
    return NicRequest(
        f"i{order}", "n", f"02:00:00:00:00:0{order}", model=model, order=order, bridge=bridge
    )


def test_interfaces_are_bridge_nics_in_order() -> None:
    """Each NIC is a bridge interface with its MAC and model, in order; virtio gets MTU 1450."""
    root = build(spec(interfaces=(nic(1, "e1000", "br-b"), nic(0, bridge="br-a"))))
    found = [
        (
            i.get("type"),
            i.find("source").get("bridge"),  # type: ignore[union-attr]
            i.find("mac").get("address"),  # type: ignore[union-attr]
            i.find("model").get("type"),  # type: ignore[union-attr]
            i.find("mtu").get("size") if i.find("mtu") is not None else None,  # type: ignore[union-attr]
        )
        for i in root.iterfind("devices/interface")
    ]
    assert found == [
        ("bridge", "br-a", "02:00:00:00:00:00", "virtio", "1450"),
        ("bridge", "br-b", "02:00:00:00:00:01", "e1000", None),
    ]
    assert interface_macs(ET.tostring(root, encoding="unicode")) == [
        "02:00:00:00:00:00",
        "02:00:00:00:00:01",
    ]


@pytest.mark.parametrize(
    "bad", [nic(0, bridge=""), nic(0, model="tulip"), replace(nic(0), mac="zz")]
)
def test_unusable_interfaces_are_refused(bad: NicRequest) -> None:
    """A NIC without a bridge, with an unknown model or a bad MAC cannot be expressed."""
    with pytest.raises(HypervisorError):
        build(spec(interfaces=(bad,)))
    with pytest.raises(HypervisorError):
        interface_xml(bad)
