"""The guest's device names of an instance's disks (vda, vdb, sda...), as the domain gets them.

The same scheme as the domain XML builder: virtio and nvme disks are
``vd*``, every other bus ``sd*``, each counted in order, a cdrom on a bus
other than scsi or usb goes on sata; the config drive (when there is one)
is the second disk. Lets the control plane name a disk before asking a node.
"""

from __future__ import annotations

import string
from collections.abc import Iterable


def device_name(prefix: str, index: int) -> str:
    """vda, vdb, ... vdz, vdaa, vdab: the same scheme as the Linux kernel."""
    letters = string.ascii_lowercase
    suffix = ""
    index += 1
    while index:
        index, rest = divmod(index - 1, 26)
        suffix = letters[rest] + suffix
    return prefix + suffix


def device_names(disks: Iterable[tuple[str, str]]) -> list[str]:
    """The device name of each (bus, device type) in the order the domain attaches them."""
    counters = {"vd": 0, "sd": 0}
    names = []
    for bus, device in disks:
        if device == "cdrom" and bus not in ("scsi", "usb"):
            bus = "sata"
        prefix = "vd" if bus in ("virtio", "nvme") else "sd"
        names.append(device_name(prefix, counters[prefix]))
        counters[prefix] += 1
    return names


def spec_device_names(disks: Iterable[tuple[str, str]], config_drive: bool) -> list[str]:
    """The device name of each of an instance's disk specs (bus, type), the config drive aside."""
    specs = list(disks)
    attached = list(specs)
    if config_drive and attached:
        attached.insert(1, ("virtio", "disk"))
    names = device_names(attached)
    if config_drive and names:
        del names[1]
    return names
