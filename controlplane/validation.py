"""Checks and defaults for what callers ask for, before anything is stored."""

from __future__ import annotations

import base64
import binascii
import json
import re
from typing import Any

from common import sidechannels
from controlplane.errors import InvalidArgument
from controlplane.model import DiskSpec, InstanceSpec, NetworkSpec, VideoSpec

DISK_BUSES = ("virtio", "sata", "scsi", "usb", "nvme")
DISK_TYPES = ("disk", "cdrom")
NIC_MODELS = ("virtio", "e1000", "rtl8139", "ne2k_pci", "pcnet", "i82551", "i82557b", "i82559er")
VIDEO_MODELS = ("vga", "cirrus", "qxl")
VDI_TYPES = ("vnc", "spice", "spiceconcurrent")
CONFIGDRIVES = ("openstack-disk", "none")
MAX_CPUS = 64
MAX_MEMORY_MB = 1024 * 1024
MAX_DISK_GB = 64 * 1024
# Interfaces per instance: creating or deleting one writes about seven keys per
# interface in one store batch, which must stay within the store's MAX_BATCH (128).
MAX_INTERFACES = 16
# As Nova: user data is at most 64 KiB once decoded.
MAX_USER_DATA = 64 * 1024
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
DNS_LABEL_RE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")
# A client request id (Create's idempotency key): printable ASCII, no spaces.
MAX_REQUEST_ID = 128
_REQUEST_ID = re.compile(r"^[!-~]{1,128}$")
MAX_METADATA_KEY = 255
MAX_METADATA_BYTES = 64 * 1024
# The constraint form of the reserved "affinity" key (Shaken Fist's newest): lists of tags.
AFFINITY_HARD = ("require_with_tag", "require_without_tag")
AFFINITY_SOFT = ("prefer_with_tag", "prefer_without_tag")
UUID_RE = re.compile(r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$")


def is_dns_name(name: str) -> bool:
    """Whether name is a DNS name: dot-separated labels of letters, digits and '-', 253 at most."""
    return len(name) <= 253 and all(DNS_LABEL_RE.match(label) for label in name.split("."))


def looks_like_uuid(text: str) -> bool:
    """Whether text has the shape of a lower-case UUID."""
    return bool(UUID_RE.match(text))


def _choice(value: str, allowed: tuple[str, ...], default: str, what: str) -> str:
    value = value or default
    if value not in allowed:
        raise InvalidArgument(f"{what} {value!r} is not one of: {', '.join(allowed)}")
    return value


def check_metadata_key(key: str) -> str:
    """A metadata key, or InvalidArgument if it is empty or too long."""
    if not key:
        raise InvalidArgument("a metadata key is required")
    if len(key) > MAX_METADATA_KEY:
        raise InvalidArgument(f"a metadata key may have at most {MAX_METADATA_KEY} characters")
    return key


def check_tags(value: Any) -> list[str]:
    """The reserved ``tags`` value: a JSON list of strings."""
    if not isinstance(value, list) or not all(isinstance(t, str) and t for t in value):
        raise InvalidArgument(
            f"metadata 'tags' must be a JSON list of non-empty strings, not {json.dumps(value)}"
        )
    return value


def check_affinity(value: Any) -> dict[str, Any]:
    """The reserved ``affinity`` value, in one of its two shapes (never both at once).

    Weighted: an object of tag -> integer weight (negative for anti-affinity).
    Constraints: an object using only require_with_tag, require_without_tag,
    prefer_with_tag and prefer_without_tag, each a list of tags.
    """
    if not isinstance(value, dict):
        raise InvalidArgument(
            f"metadata 'affinity' must be a JSON object of tag -> integer weight, "
            f"not {json.dumps(value)}"
        )
    names = AFFINITY_HARD + AFFINITY_SOFT
    constraints = [k for k in value if k in names]
    if constraints and len(constraints) != len(value):
        raise InvalidArgument(
            "metadata 'affinity' mixes tag weights with constraints "
            f"({', '.join(constraints)}); use one form or the other"
        )
    for key, item in value.items():
        if not key:
            raise InvalidArgument("metadata 'affinity' has an empty tag")
        if constraints:
            if not isinstance(item, list) or not all(isinstance(t, str) and t for t in item):
                raise InvalidArgument(
                    f"metadata 'affinity' {key!r} must be a list of tags, not {json.dumps(item)}"
                )
        elif isinstance(item, bool) or not isinstance(item, int):
            raise InvalidArgument(
                f"metadata 'affinity' weight for tag {key!r} must be an integer "
                f"(negative for anti-affinity), not {json.dumps(item)}"
            )
    return value


def check_instance_metadata(metadata: dict[str, Any]) -> dict[str, Any]:
    """An instance's whole metadata: reserved keys checked, size bounded."""
    for key in metadata:
        check_metadata_key(key)
    if "tags" in metadata:
        check_tags(metadata["tags"])
    if "affinity" in metadata:
        check_affinity(metadata["affinity"])
    return check_metadata_size(metadata)


def check_metadata_size(metadata: dict[str, Any]) -> dict[str, Any]:
    """Metadata as long as its JSON fits MAX_METADATA_BYTES."""
    if len(json.dumps(metadata, separators=(",", ":"))) > MAX_METADATA_BYTES:
        raise InvalidArgument(f"metadata may hold at most {MAX_METADATA_BYTES} bytes of JSON")
    return metadata


def check_disk(index: int, disk: DiskSpec) -> DiskSpec:
    """A disk spec with defaults applied, or InvalidArgument saying what is wrong."""
    if disk.bus == "ide":
        raise InvalidArgument(
            f"disk {index}: bus 'ide' is no longer supported (removed in Shaken Fist v0.7 "
            "for its very poor performance); use virtio, sata, scsi, usb or nvme"
        )
    bus = _choice(disk.bus, DISK_BUSES, "virtio", f"disk {index}: bus")
    kind = _choice(disk.type, DISK_TYPES, "disk", f"disk {index}: type")
    if disk.size_gb < 0 or disk.size_gb > MAX_DISK_GB:
        raise InvalidArgument(f"disk {index}: size must be between 0 and {MAX_DISK_GB} GB")
    if disk.size_gb == 0 and not disk.base:
        raise InvalidArgument(f"disk {index}: a blank disk needs a size greater than 0")
    if kind == "cdrom" and not disk.base:
        raise InvalidArgument(f"disk {index}: a cdrom needs a base image")
    return DiskSpec(size_gb=disk.size_gb, base=disk.base, bus=bus, type=kind)


def check_network(index: int, net: NetworkSpec) -> NetworkSpec:
    """A network spec with defaults applied; the network and addresses are checked later."""
    model = _choice(net.model, NIC_MODELS, "virtio", f"network {index}: model")
    mac = net.macaddress.lower()
    if mac and not MAC_RE.match(mac):
        raise InvalidArgument(f"network {index}: {net.macaddress!r} is not a MAC address")
    if not net.network_uuid:
        raise InvalidArgument(f"network {index}: network_uuid (a network UUID or name) is required")
    if not looks_like_uuid(net.network_uuid) and not NAME_RE.match(net.network_uuid):
        raise InvalidArgument(
            f"network {index}: {net.network_uuid!r} is neither a network UUID nor a name"
        )
    return NetworkSpec(
        network_uuid=net.network_uuid,
        macaddress=mac,
        address=net.address,
        model=model,
        float=net.float,
    )


def check_video(video: VideoSpec) -> VideoSpec:
    """A video spec with defaults applied."""
    memory = video.memory or 16384
    if memory < 0 or memory > 512 * 1024:
        raise InvalidArgument("video memory must be between 1 and 524288 KiB")
    return VideoSpec(
        model=_choice(video.model, VIDEO_MODELS, "cirrus", "video model"),
        memory=memory,
        vdi=_choice(video.vdi, VDI_TYPES, "spice", "vdi"),
    )


def check_user_data(user_data: str) -> str:
    """User data as stored: base64 text (as Shaken Fist takes it), checked to decode."""
    text = "".join(user_data.split())
    if not text:
        return ""
    try:
        decoded = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidArgument(f"user_data must be base64-encoded: {exc}") from exc
    if len(decoded) > MAX_USER_DATA:
        raise InvalidArgument(
            f"user_data is {len(decoded)} bytes once decoded; at most {MAX_USER_DATA} are allowed"
        )
    return text


def check_firmware(spec: InstanceSpec) -> None:
    """Secure boot and an NVRAM template only make sense with UEFI."""
    if spec.secure_boot and not spec.uefi:
        raise InvalidArgument("secure boot requires UEFI be enabled")
    if spec.nvram_template and not spec.uefi:
        raise InvalidArgument("an nvram_template requires UEFI be enabled")
    template = spec.nvram_template
    if template and not (template.startswith("/") or ":" in template):
        raise InvalidArgument(
            f"nvram_template {template!r} must be an absolute path on the node, "
            "sf://blob/UUID, sf://upload/NAMESPACE/NAME or label:NAME"
        )


def machine_type(spec: InstanceSpec) -> str:
    """The emulated machine an instance gets: q35 for secure boot (SMM), pc otherwise."""
    return "q35" if spec.secure_boot else "pc"


def check_request_id(request_id: str) -> None:
    """A client request id is empty or 1-128 printable ASCII characters without spaces."""
    if request_id and not _REQUEST_ID.match(request_id):
        raise InvalidArgument(
            f"client_request_id must be 1-{MAX_REQUEST_ID} printable ASCII characters "
            "without spaces"
        )


def check_spec(spec: InstanceSpec) -> InstanceSpec:
    """The whole create request checked, with defaults applied."""
    if not NAME_RE.match(spec.name):
        raise InvalidArgument(
            f"name {spec.name!r} must be 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    if looks_like_uuid(spec.name):
        raise InvalidArgument("an instance name may not look like a UUID")
    if not 1 <= spec.cpus <= MAX_CPUS:
        raise InvalidArgument(f"cpus must be between 1 and {MAX_CPUS}, not {spec.cpus}")
    if not 16 <= spec.memory <= MAX_MEMORY_MB:
        raise InvalidArgument(
            f"memory must be between 16 and {MAX_MEMORY_MB} MiB, not {spec.memory}"
        )
    if not spec.disks:
        raise InvalidArgument("an instance needs at least one disk")
    if len(spec.networks) > MAX_INTERFACES:
        raise InvalidArgument(
            f"an instance has at most {MAX_INTERFACES} interfaces, not {len(spec.networks)}"
        )
    check_firmware(spec)
    configdrive = _choice(spec.configdrive, CONFIGDRIVES, "openstack-disk", "configdrive")
    for channel in spec.side_channels:
        if not NAME_RE.match(channel):
            raise InvalidArgument(f"side channel name {channel!r} is not valid")
    return InstanceSpec(
        name=spec.name,
        cpus=spec.cpus,
        memory=spec.memory,
        disks=tuple(check_disk(i, d) for i, d in enumerate(spec.disks)),
        networks=tuple(check_network(i, n) for i, n in enumerate(spec.networks)),
        video=check_video(spec.video),
        ssh_key=spec.ssh_key,
        user_data=check_user_data(spec.user_data),
        metadata=check_instance_metadata(dict(spec.metadata)),
        side_channels=sidechannels.normalized(spec.side_channels),
        uefi=spec.uefi,
        secure_boot=spec.secure_boot,
        nvram_template=spec.nvram_template,
        configdrive=configdrive,
    )
