"""Build libvirt domain XML from a DomainRequest: a pure function, no libvirt import.

Choices worth knowing (each checked by booting a guest on libvirt 9.0 / QEMU 7.2):

- The domain is named ``mc-<uuid>``, carries the instance UUID, and names
  the node agent that made it in its metadata, so a driver can tell its own
  domains from anybody else's (another agent's on a shared libvirtd included).
- ``<features><acpi/>`` is always on: without ACPI a guest never sees the power
  button, so neither ``reboot(VIR_DOMAIN_REBOOT_ACPI_POWER_BTN)`` nor a
  graceful shutdown can work. ``on_reboot=restart`` makes libvirt start QEMU
  with ``-no-shutdown``, which is what its "fake reboot" needs: an ACPI reboot
  is a power-button press followed, when the guest powers down, by a reset
  instead of a stop. ``on_poweroff=destroy`` then means a guest that powers
  itself off ends up ``off``.
- UEFI boots OVMF's code read-only from ``/usr/share/OVMF`` with a
  per-instance variable store. Secure boot takes the ``q35`` machine (libvirt
  requires it for a secure loader), the ``secboot`` code, a loader marked
  ``secure`` and SMM on; other instances keep ``pc``.
- A config drive is an ordinary disk marked read-only (``<readonly/>``); the
  executor puts it second, so it is ``vdb`` behind a virtio boot disk.
- libvirt 9.0 has no ``nvme`` disk bus. An nvme disk is defined as a virtio
  disk (so libvirt still opens, labels and tracks the whole backing chain)
  whose QEMU device is switched to ``nvme`` with ``<qemu:override>``; the
  guest sees an NVMe controller (PCI 1b36:0010) with the disk as namespace 1.
- Each network interface is a ``<interface type='bridge'>`` on its network's
  bridge, in order (libvirt gives PCI slots in document order, so the guest
  sees them as eth0, eth1, ...), with the allocated MAC and NIC model; virtio
  NICs get the VXLAN-sized MTU (1450) — libvirt refuses an MTU on other models.
- The serial console is a TCP server (``console_port``, raw protocol) on the
  node's console address, logged to the console log; libvirt hands the log
  to virtlogd, which rotates it. Without a console port (unit tests) it is a
  pty. VNC and SPICE listen on fixed ports (``vdi_port``, and
  ``vdi_tls_port`` for SPICE when TLS is configured) instead of libvirt's
  autoport, so the ports are known before the domain starts and stay the
  same across power cycles. The display has a password (``passwd``), which
  libvirt shows only in XML asked for with ``VIR_DOMAIN_XML_SECURE``;
  ``graphics_with_new_password`` gives the ``<graphics>`` element with a new one,
  for ``updateDeviceFlags`` on a stopped domain.
- The domain holds only what the instance asked for: libvirt's defaults add a
  USB controller (``piix3-uhci`` on ``pc``) and a virtio memory balloon to every
  domain, which SeaBIOS and the guest then probe on each boot. The USB
  controller is ``model='none'`` unless a disk uses the ``usb`` bus, and the
  balloon is ``model='none'`` always (nothing here inflates it). There is no
  tablet and no SPICE agent channel; QEMU runs with ``-nodefaults`` (libvirt's
  own), so the only serial port is the console and there is no parallel port.
  ``tools/bench_boot.py --trim-table`` measures what each of these costs.
- SPICE has no share policy in libvirt; ``spiceconcurrent`` (as in Shaken
  Fist) sets ``SPICE_DEBUG_ALLOW_MC=1`` in QEMU's environment, which lets
  several SPICE clients share the console.
"""

from __future__ import annotations

import re
import string
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

from common.nodewire.domain import DomainRequest, NicRequest
from nodeagent.hypervisor.console_ports import ConsolePorts, new_password
from nodeagent.hypervisor.protocol import HypervisorError, PreparedDisk

METADATA_NS = "https://minicloud.dev/xmlns/libvirt/domain/1.0"
QEMU_NS = "http://libvirt.org/schemas/domain/qemu/1.0"
DOMAIN_PREFIX = "mc-"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"

OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
OVMF_CODE_SECBOOT = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
OVMF_VARS_SECBOOT = Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")

DOMAIN_TYPES = frozenset({"kvm", "qemu"})
DISK_BUSES = frozenset({"virtio", "sata", "scsi", "usb", "nvme"})
DISK_DEVICES = frozenset({"disk", "cdrom"})
VIDEO_MODELS = frozenset({"cirrus", "vga", "qxl", "virtio", "bochs", "ramfb", "none"})
# Models whose video RAM libvirt sets through the ``vram`` attribute.
VIDEO_MODELS_WITH_VRAM = frozenset({"cirrus", "vga", "qxl"})
GRAPHICS = frozenset({"vnc", "spice", "spiceconcurrent"})
NIC_MODELS = frozenset(
    {"virtio", "e1000", "rtl8139", "ne2k_pci", "pcnet", "i82551", "i82557b", "i82559er"}
)
NIC_MTU = 1450
_MAC = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

# Longest unix socket path the kernel accepts (sun_path is 108 bytes with a NUL).
MAX_SOCKET_PATH = 107
_CHANNEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")

ET.register_namespace("mc", METADATA_NS)
ET.register_namespace("qemu", QEMU_NS)


@dataclass(frozen=True)
class DomainIdentity:
    """What a domain's XML says about the instance it belongs to."""

    uuid: str
    name: str
    namespace: str
    node: str = ""
    # The cluster whose node agent made it ("": made before domains named their cluster).
    cluster: str = ""


def domain_name(uuid: str) -> str:
    """The libvirt name of the domain for an instance."""
    return f"{DOMAIN_PREFIX}{uuid}"


def channel_socket_path(socket_dir: Path, channel: str) -> Path:
    """Where the host end of a virtio-serial channel listens."""
    return socket_dir / f"{channel}.sock"


def build_domain_xml(
    spec: DomainRequest,
    disks: list[PreparedDisk],
    *,
    console_log: Path,
    domain_type: str,
    socket_dir: Path,
    nvram_path: Path | None = None,
    listen_address: str = "127.0.0.1",
    node_name: str = "",
    ports: ConsolePorts | None = None,
    cluster_id: str = "",
) -> str:
    """Return the libvirt domain XML for ``spec`` with ``disks`` attached in order.

    ``socket_dir`` is the instance's own folder for channel sockets; the UEFI
    variable store goes to ``nvram_path`` (default: ``socket_dir/nvram.fd``),
    which libvirt fills on first start from ``spec.nvram_template`` (a local
    file) or the OVMF template that fits (standard keys enrolled for secure
    boot). Raises
    ``HypervisorError`` (not retryable) for specs that cannot be expressed.
    """
    if domain_type not in DOMAIN_TYPES:
        raise HypervisorError(f"unknown domain type {domain_type!r}; expected kvm or qemu")
    if spec.secure_boot and not spec.uefi:
        raise HypervisorError("secure boot needs UEFI; the instance has uefi disabled")
    if spec.cpus < 1:
        raise HypervisorError(f"an instance needs at least one vCPU, not {spec.cpus}")
    if spec.memory_mb < 1:
        raise HypervisorError(f"an instance needs some memory, not {spec.memory_mb} MiB")

    root = ET.Element("domain", {"type": domain_type})
    _text(root, "name", domain_name(spec.uuid))
    _text(root, "uuid", spec.uuid)
    metadata = ET.SubElement(root, "metadata")
    instance = ET.SubElement(metadata, f"{{{METADATA_NS}}}instance")
    _text(instance, f"{{{METADATA_NS}}}name", spec.name)
    _text(instance, f"{{{METADATA_NS}}}namespace", spec.namespace)
    _text(instance, f"{{{METADATA_NS}}}node", node_name)
    if cluster_id:
        _text(instance, f"{{{METADATA_NS}}}cluster", cluster_id)
    _text(root, "memory", str(spec.memory_mb), unit="MiB")
    _text(root, "currentMemory", str(spec.memory_mb), unit="MiB")
    _text(root, "vcpu", str(spec.cpus), placement="static")

    _os(root, spec, nvram_path or socket_dir / "nvram.fd")
    features = ET.SubElement(root, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    if spec.secure_boot:
        ET.SubElement(features, "smm", state="on")
    if domain_type == "kvm":
        ET.SubElement(root, "cpu", mode="host-model")
    _text(root, "on_poweroff", "destroy")
    _text(root, "on_reboot", "restart")
    _text(root, "on_crash", "destroy")

    devices = ET.SubElement(root, "devices")
    nvme_aliases = _disks(devices, disks)
    for nic in sorted(spec.interfaces, key=lambda n: n.order):
        devices.append(interface_element(nic))
    ports = ports or ConsolePorts()
    _console(devices, console_log, listen_address, ports.console_port)
    _video(devices, spec)
    _graphics(devices, spec, listen_address, ports)
    _channels(devices, spec, socket_dir)
    # Nothing inflates a balloon here: libvirt's default virtio one is only a cost.
    ET.SubElement(devices, "memballoon", model="none")

    _qemu_extras(root, spec, nvme_aliases)
    ET.indent(root)
    return ET.tostring(root, encoding="unicode")


def interface_element(nic: NicRequest) -> ET.Element:
    """The ``<interface>`` of one NIC on its network's bridge (HypervisorError if unusable)."""
    if not nic.bridge:
        raise HypervisorError(f"interface {nic.uuid} has no bridge to attach to")
    if nic.model not in NIC_MODELS:
        raise HypervisorError(f"interface {nic.uuid} has unknown NIC model {nic.model!r}")
    if not _MAC.match(nic.mac):
        raise HypervisorError(f"interface {nic.uuid} has a bad MAC address {nic.mac!r}")
    element = ET.Element("interface", type="bridge")
    ET.SubElement(element, "source", bridge=nic.bridge)
    ET.SubElement(element, "mac", address=nic.mac)
    ET.SubElement(element, "model", type=nic.model)
    if nic.model == "virtio":
        ET.SubElement(element, "mtu", size=str(NIC_MTU))
    return element


def interface_xml(nic: NicRequest) -> str:
    """One NIC's ``<interface>`` XML, for hot plugging."""
    element = interface_element(nic)
    ET.indent(element)
    return ET.tostring(element, encoding="unicode")


def interface_macs(xml: str) -> list[str]:
    """The MAC addresses of a domain's interfaces, from its XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HypervisorError(f"unreadable domain XML: {exc}") from exc
    return [m.get("address", "").lower() for m in root.findall("devices/interface/mac")]


def parse_domain_identity(xml: str) -> DomainIdentity:
    """Read the instance UUID, name and namespace back from domain XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HypervisorError(f"unreadable domain XML: {exc}") from exc
    uuid = root.findtext("uuid", default="").strip()
    name = root.findtext(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}name", default="")
    namespace = root.findtext(
        f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}namespace", default=""
    )
    node = root.findtext(f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}node", default="")
    cluster = root.findtext(
        f"metadata/{{{METADATA_NS}}}instance/{{{METADATA_NS}}}cluster", default=""
    )
    return DomainIdentity(uuid=uuid, name=name, namespace=namespace, node=node, cluster=cluster)


def _text(parent: ET.Element, tag: str, text: str, **attrib: str) -> ET.Element:
    element = ET.SubElement(parent, tag, attrib)
    element.text = text
    return element


def _os(root: ET.Element, spec: DomainRequest, nvram_path: Path) -> None:
    os_element = ET.SubElement(root, "os")
    machine = "q35" if spec.secure_boot else "pc"
    _text(os_element, "type", "hvm", arch="x86_64", machine=machine)
    if not spec.uefi:
        return
    if spec.secure_boot:
        code, template = OVMF_CODE_SECBOOT, OVMF_VARS_SECBOOT
    else:
        code, template = OVMF_CODE, OVMF_VARS
    _text(
        os_element,
        "loader",
        str(code),
        readonly="yes",
        type="pflash",
        secure="yes" if spec.secure_boot else "no",
    )
    if spec.nvram_template:
        # A local file by now: the executor resolved the caller's reference.
        template = Path(spec.nvram_template)
    _text(os_element, "nvram", str(nvram_path), template=str(template))


def _device_name(prefix: str, index: int) -> str:
    """vda, vdb, ... vdz, vdaa, vdab: the same scheme as the Linux kernel."""
    letters = string.ascii_lowercase
    suffix = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        suffix = letters[rest] + suffix
    return prefix + suffix


def _disks(devices: ET.Element, disks: list[PreparedDisk]) -> list[str]:
    """Add the disks and return the aliases of those that QEMU must turn into NVMe."""
    if not disks:
        _usb_controller(devices, usb=False)
        return []
    counters = {"vd": 0, "sd": 0}
    nvme_aliases: list[str] = []
    needs_scsi = False
    for index, disk in enumerate(disks):
        if disk.bus not in DISK_BUSES:
            raise HypervisorError(f"disk {index} has unknown bus {disk.bus!r}")
        if disk.device not in DISK_DEVICES:
            raise HypervisorError(f"disk {index} has unknown device type {disk.device!r}")
        bus = disk.bus
        if disk.device == "cdrom" and bus not in ("scsi", "usb"):
            bus = "sata"
        prefix = "vd" if bus in ("virtio", "nvme") else "sd"
        dev = _device_name(prefix, counters[prefix])
        counters[prefix] += 1
        needs_scsi = needs_scsi or bus == "scsi"

        element = ET.SubElement(devices, "disk", type="file", device=disk.device)
        ET.SubElement(element, "driver", name="qemu", type=disk.format)
        ET.SubElement(element, "source", file=str(disk.path))
        ET.SubElement(element, "target", dev=dev, bus="virtio" if bus == "nvme" else bus)
        if disk.device == "cdrom" or disk.readonly:
            ET.SubElement(element, "readonly")
        if bus == "nvme":
            # QEMU's nvme device refuses to start without a serial number.
            _text(element, "serial", f"mcnvme{len(nvme_aliases)}")
            alias = f"ua-mc-nvme{len(nvme_aliases)}"
            ET.SubElement(element, "alias", name=alias)
            nvme_aliases.append(alias)
        if index == 0:
            ET.SubElement(element, "boot", order="1")
    if needs_scsi:
        ET.SubElement(devices, "controller", type="scsi", index="0", model="virtio-scsi")
    _usb_controller(devices, usb=any(disk.bus == "usb" for disk in disks))
    return nvme_aliases


def _usb_controller(devices: ET.Element, *, usb: bool) -> None:
    """A USB controller only for a USB disk (libvirt's default for the machine); else none."""
    # With a USB disk, no element: libvirt adds the machine's own default controller
    # (piix3-uhci on pc, qemu-xhci on q35); an element without a model would get
    # piix3-uhci behind a PCIe-to-PCI bridge on q35.
    if not usb:
        ET.SubElement(devices, "controller", type="usb", index="0", model="none")


def parse_console_ports(xml: str) -> ConsolePorts:
    """The serial console's TCP port and the VNC/SPICE ports named in domain XML."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HypervisorError(f"unreadable domain XML: {exc}") from exc
    console_port = 0
    for serial in root.iterfind("devices/serial"):
        source = serial.find("source")
        if serial.get("type") == "tcp" and source is not None:
            console_port = _port(source.get("service"))
            break
    vdi_port = vdi_tls_port = 0
    password = ""
    graphics = root.find("devices/graphics")
    if graphics is not None:
        vdi_port = _port(graphics.get("port"))
        vdi_tls_port = _port(graphics.get("tlsPort"))
        password = graphics.get("passwd", "")
    return ConsolePorts(console_port, vdi_port, vdi_tls_port, password)


def graphics_with_new_password(xml: str) -> tuple[str, str] | None:
    """The display's ``<graphics>`` element with a new password, and that password.

    None when the domain has no display. ``xml`` is the domain's XML read with
    ``VIR_DOMAIN_XML_SECURE``, so nothing of the old element is lost when the
    new one replaces it.
    """
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise HypervisorError(f"unreadable domain XML: {exc}") from exc
    graphics = root.find("devices/graphics")
    if graphics is None:
        return None
    password = new_password(graphics.get("type", ""))
    graphics.set("passwd", password)
    graphics.tail = None
    return ET.tostring(graphics, encoding="unicode"), password


def _port(value: str | None) -> int:
    try:
        port = int(value or 0)
    except ValueError:
        return 0
    return port if 0 < port < 65536 else 0


def _console(devices: ET.Element, console_log: Path, listen_address: str, port: int) -> None:
    if port:
        serial = ET.SubElement(devices, "serial", type="tcp")
        ET.SubElement(serial, "source", mode="bind", host=listen_address, service=str(port))
        ET.SubElement(serial, "protocol", type="raw")
        kind = "tcp"
    else:
        serial = ET.SubElement(devices, "serial", type="pty")
        kind = "pty"
    ET.SubElement(serial, "log", file=str(console_log), append="on")
    ET.SubElement(serial, "target", port="0")
    console = ET.SubElement(devices, "console", type=kind)
    ET.SubElement(console, "target", type="serial", port="0")


def _video(devices: ET.Element, spec: DomainRequest) -> None:
    model = spec.video.model
    if model not in VIDEO_MODELS:
        raise HypervisorError(f"unknown video model {model!r}")
    video = ET.SubElement(devices, "video")
    attributes = {"type": model}
    if model in VIDEO_MODELS_WITH_VRAM:
        if spec.video.memory <= 0:
            raise HypervisorError(f"video memory must be positive, not {spec.video.memory} KiB")
        attributes["vram"] = str(spec.video.memory)
    ET.SubElement(video, "model", attributes)


def _graphics(
    devices: ET.Element, spec: DomainRequest, listen_address: str, ports: ConsolePorts
) -> None:
    vdi = spec.video.vdi
    if vdi not in GRAPHICS:
        raise HypervisorError(f"unknown remote display protocol {vdi!r}")
    kind = "vnc" if vdi == "vnc" else "spice"
    attributes = {"type": kind, "autoport": "yes", "listen": listen_address}
    if ports.vdi_port:
        attributes.update(autoport="no", port=str(ports.vdi_port))
        if kind == "spice" and ports.vdi_tls_port:
            attributes["tlsPort"] = str(ports.vdi_tls_port)
    if ports.vdi_password:
        attributes["passwd"] = ports.vdi_password
    graphics = ET.SubElement(devices, "graphics", attributes)
    ET.SubElement(graphics, "listen", type="address", address=listen_address)


def _channels(devices: ET.Element, spec: DomainRequest, socket_dir: Path) -> None:
    names = [*dict.fromkeys([*spec.side_channels, GUEST_AGENT_CHANNEL])]
    for name in names:
        if not _CHANNEL_NAME.match(name):
            raise HypervisorError(f"side channel name {name!r} is not a valid port name")
        path = channel_socket_path(socket_dir, name)
        if len(str(path)) > MAX_SOCKET_PATH:
            raise HypervisorError(
                f"socket path for channel {name!r} is {len(str(path))} characters long; "
                f"unix sockets allow {MAX_SOCKET_PATH}: use a shorter socket folder"
            )
        channel = ET.SubElement(devices, "channel", type="unix")
        ET.SubElement(channel, "source", mode="bind", path=str(path))
        ET.SubElement(channel, "target", type="virtio", name=name)


def _qemu_extras(root: ET.Element, spec: DomainRequest, nvme_aliases: list[str]) -> None:
    if spec.video.vdi == "spiceconcurrent":
        commandline = ET.SubElement(root, f"{{{QEMU_NS}}}commandline")
        ET.SubElement(commandline, f"{{{QEMU_NS}}}env", name="SPICE_DEBUG_ALLOW_MC", value="1")
    if nvme_aliases:
        override = ET.SubElement(root, f"{{{QEMU_NS}}}override")
        for alias in nvme_aliases:
            device = ET.SubElement(override, f"{{{QEMU_NS}}}device", alias=alias)
            frontend = ET.SubElement(device, f"{{{QEMU_NS}}}frontend")
            ET.SubElement(
                frontend, f"{{{QEMU_NS}}}property", name="driver", type="string", value="nvme"
            )
