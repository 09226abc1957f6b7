"""Benchmark: create → guest booted, through minicloud vs a plain QEMU command.

Both boot the same guest image (a fresh qcow2 overlay each run) under the
same accelerator, memory and vCPUs, and stop the clock when the serial
console shows the guest's "boot complete" banner. minicloud's figure starts
at the Create call, so it includes validation, placement, the node stream,
disk preparation, domain definition and libvirt start-up.

    .venv/bin/python tools/bench_boot.py --runs 5
    .venv/bin/python tools/bench_boot.py --runs 3 --trim-table

Runs alternate between the two so machine load affects both alike; the
median of each and their ratio are printed (goal: ratio ≤ 1.10), with the
minicloud path split into stages from the instance's events (Create to the
node's first event, disks, config drive, domain started, guest booted).

``--trim-table`` measures, instead, what each device minicloud leaves out of
a domain costs, and what each device an instance asks for costs: it boots
the domain XML minicloud builds (``build_domain_xml``, default video and
display, the qemu-ga channel, a config drive) straight through libvirt
(``virsh define`` + ``start``, no control plane), then the same XML with one
item put back or taken away, round robin, and prints the median of each
against the trimmed domain, with plain QEMU for reference.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid as uuidlib
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common.nodewire.domain import DomainRequest
from nodeagent.disks.configdrive import LABEL, RANDOM_SEED_BYTES, drive_files
from nodeagent.disks.iso import write_iso
from nodeagent.hypervisor.domain_xml import build_domain_xml
from nodeagent.hypervisor.protocol import PreparedDisk
from tools.cluster import BANNER, Cluster, build_guest_image, virsh, wait_until

MEMORY_MB = 256
POLL = 0.02  # seconds between console checks, the same for both paths
# The node's events that split the minicloud path into stages, in order.
STAGE_EVENTS = ("preparing disks", "disks ready", "config drive built", "domain started")
TRIM_DIR = Path("/var/lib/mc/trim")


def minicloud_boot(cluster: Cluster, run: int) -> tuple[float, dict[str, float]]:
    """Seconds from Create to the banner on the console, and when each stage ended."""
    with cluster.client() as api:
        started, wall = time.monotonic(), time.time()
        inst = api.create(
            {
                "name": f"bench-{run}",
                "cpus": 1,
                "memory": MEMORY_MB,
                "disks": [{"size_gb": 2, "base": "debian:11"}],
            }
        )
        uuid = inst["uuid"]
        wait_until(lambda: BANNER in cluster.console(uuid), 300, "the guest banner", POLL)
        elapsed = time.monotonic() - started
        stages: dict[str, float] = {}
        for event in api.events(uuid, limit=100):
            message = event.get("message", "")
            if message in STAGE_EVENTS and message not in stages:
                stages[message] = float(event.get("timestamp", 0)) - wall
        api.delete(uuid)
        api.wait(uuid, lambda i: i["state"] == "deleted", timeout=60)
    return elapsed, stages


def plain_qemu_boot(image: Path, domain_type: str) -> float:
    """Seconds from launching qemu-system-x86_64 on a fresh overlay to the banner."""
    with tempfile.TemporaryDirectory() as tmp:
        overlay, log = Path(tmp) / "disk.qcow2", Path(tmp) / "console.log"
        subprocess.run(
            [
                "qemu-img",
                "create",
                "-q",
                "-f",
                "qcow2",
                "-b",
                str(image),
                "-F",
                "qcow2",
                str(overlay),
                "2G",
            ],
            check=True,
        )
        started = time.monotonic()
        proc = subprocess.Popen(
            [
                "qemu-system-x86_64",
                "-machine",
                f"pc,accel={'kvm' if domain_type == 'kvm' else 'tcg'}",
                "-m",
                str(MEMORY_MB),
                "-smp",
                "1",
                "-nodefaults",
                "-display",
                "none",
                "-drive",
                f"file={overlay},if=virtio,format=qcow2",
                "-serial",
                f"file:{log}",
            ],
        )
        try:
            wait_until(
                lambda: log.exists() and BANNER in log.read_text(errors="replace"),
                300,
                "the plain QEMU guest banner",
            )
            return time.monotonic() - started
        finally:
            proc.kill()
            proc.wait()


# -- the trim table: what each item of the domain costs ------------------------

Edit = Callable[[ET.Element], None]


def _put_back_usb(root: ET.Element) -> None:
    """Drop the model='none' USB controller: libvirt adds its default piix3-uhci."""
    devices = root.find("devices")
    assert devices is not None
    for controller in devices.findall("controller[@type='usb']"):
        devices.remove(controller)


def _put_back_balloon(root: ET.Element) -> None:
    """libvirt's default memory balloon, a virtio one."""
    balloon = root.find("devices/memballoon")
    assert balloon is not None
    balloon.set("model", "virtio")


def _as_before(root: ET.Element) -> None:
    """The domain as minicloud defined it before the trim: both of the above."""
    _put_back_usb(root)
    _put_back_balloon(root)


def _no_display(root: ET.Element) -> None:
    """No video card and no remote display (the instance asked for both)."""
    devices = root.find("devices")
    assert devices is not None
    for element in devices.findall("graphics"):
        devices.remove(element)
    model = devices.find("video/model")
    assert model is not None
    model.attrib = {"type": "none"}


def _no_config_drive(root: ET.Element) -> None:
    """No config drive (the instance asked for one)."""
    devices = root.find("devices")
    assert devices is not None
    for disk in devices.findall("disk"):
        if disk.find("readonly") is not None:
            devices.remove(disk)


def _no_channels(root: ET.Element) -> None:
    """No qemu-ga channel, so no virtio-serial controller and no qemu-ga in the guest."""
    devices = root.find("devices")
    assert devices is not None
    for channel in devices.findall("channel"):
        devices.remove(channel)


# (label, kind, edit): kind "trimmed" is an item minicloud now leaves out, put back;
# "asked for" is an item the instance asks for, taken away to show what it costs.
TRIM_ITEMS: list[tuple[str, str, Edit | None]] = [
    ("the domain minicloud defines (trimmed)", "", None),
    ("+ USB controller (libvirt's default piix3-uhci)", "trimmed", _put_back_usb),
    ("+ virtio memory balloon", "trimmed", _put_back_balloon),
    ("+ both: the domain before the trim", "trimmed", _as_before),
    ("- cirrus VGA and SPICE display", "asked for", _no_display),
    ("- config drive (second virtio disk)", "asked for", _no_config_drive),
    ("- qemu-ga channel (virtio-serial)", "asked for", _no_channels),
]


def _trim_base(image: Path) -> Path:
    """The guest image where QEMU (another user under libvirt) can read it."""
    TRIM_DIR.mkdir(parents=True, exist_ok=True)
    for folder in (TRIM_DIR.parent, TRIM_DIR):
        folder.chmod(0o755)
    base = TRIM_DIR / f"base-{image.stem}.qcow2"
    if not base.exists():
        shutil.copyfile(image, base.with_suffix(".partial"))
        os.replace(base.with_suffix(".partial"), base)
    base.chmod(0o644)
    return base


def libvirt_boot(base: Path, edit: Edit | None) -> float:
    """Seconds from defining minicloud's domain XML (edited) in libvirt to the banner."""
    uuid = str(uuidlib.uuid4())
    spec = DomainRequest(uuid=uuid, name="trim", cpus=1, memory_mb=MEMORY_MB)
    folder = TRIM_DIR / uuid[:8]
    folder.mkdir()
    folder.chmod(0o755)
    overlay, drive = folder / "disk0.qcow2", folder / "config.iso"
    backing = ["-b", str(base), "-F", "qcow2"]
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", *backing, str(overlay), "2G"], check=True
    )
    files = drive_files(spec, random_seed=os.urandom(RANDOM_SEED_BYTES))
    asyncio.run(write_iso(files, drive, LABEL))
    disks = [
        PreparedDisk(path=overlay, bus="virtio", device="disk", format="qcow2"),
        PreparedDisk(path=drive, bus="virtio", device="disk", format="raw", readonly=True),
    ]
    log = folder / "console.log"
    root = ET.fromstring(
        build_domain_xml(spec, disks, console_log=log, domain_type="qemu", socket_dir=folder)
    )
    # Not an mc- name and no minicloud metadata: no node agent may take it for its own.
    name = f"bench-trim-{uuid[:8]}"
    name_element = root.find("name")
    assert name_element is not None
    name_element.text = name
    metadata = root.find("metadata")
    if metadata is not None:
        root.remove(metadata)
    if edit is not None:
        edit(root)
    xml_file = folder / "domain.xml"
    xml_file.write_text(ET.tostring(root, encoding="unicode"))
    started = time.monotonic()
    try:
        for args in (("define", str(xml_file)), ("start", name)):
            done = virsh(*args)
            if done.returncode != 0:
                raise RuntimeError(f"virsh {' '.join(args)}: {done.stderr.strip()}")
        wait_until(
            lambda: log.exists() and BANNER in log.read_text(errors="replace"),
            300,
            "the libvirt guest banner",
            POLL,
        )
        return time.monotonic() - started
    finally:
        virsh("destroy", name)
        virsh("undefine", "--nvram", name)
        shutil.rmtree(folder, ignore_errors=True)


def trim_table(image: Path, runs: int) -> dict[str, Any]:
    """Boot each variant ``runs`` times, round robin, and print the table of medians."""
    base = _trim_base(image)
    libvirt_boot(base, None)  # warm-up: page cache, libvirt's capabilities
    times: dict[str, list[float]] = {label: [] for label, _, _ in TRIM_ITEMS}
    times["plain qemu-system-x86_64"] = []
    for run in range(1, runs + 1):
        for label, _, edit in TRIM_ITEMS:
            times[label].append(libvirt_boot(base, edit))
        times["plain qemu-system-x86_64"].append(plain_qemu_boot(image, "qemu"))
        print(
            f"run {run}: " + ", ".join(f"{v[-1]:.2f}" for v in times.values()) + " s",
            flush=True,
        )
    medians = {label: statistics.median(values) for label, values in times.items()}
    reference = medians[TRIM_ITEMS[0][0]]
    kinds = {label: kind for label, kind, _ in TRIM_ITEMS}
    print()
    print("| domain | item | median (s) | vs trimmed (s) | runs (s) |")
    print("|---|---|---|---|---|")
    for label, values in times.items():
        delta = medians[label] - reference
        print(
            f"| {label} | {kinds.get(label, 'reference')} | {medians[label]:.2f} | "
            f"{delta:+.2f} | {', '.join(f'{v:.2f}' for v in values)} |"
        )
    return {
        "runs": runs,
        "median_s": {label: round(m, 3) for label, m in medians.items()},
        "runs_s": {label: [round(v, 3) for v in values] for label, values in times.items()},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    parser.add_argument(
        "--trim-table",
        action="store_true",
        help="measure each trimmed (and each asked-for) domain item's cost through libvirt",
    )
    args = parser.parse_args()
    image = build_guest_image()
    if args.trim_table:
        table = trim_table(image, args.runs)
        print(json.dumps(table))
        if args.out:
            args.out.write_text(json.dumps(table, indent=2) + "\n")
        return 0
    cluster = Cluster.launch(image, Path("/var/lib/mc/b"))
    stages: list[dict[str, float]] = []
    try:
        minicloud_boot(cluster, 0)  # warm-up: fills the node's image cache
        ours, plain = [], []
        for run in range(1, args.runs + 1):
            elapsed, stage = minicloud_boot(cluster, run)
            ours.append(elapsed)
            stages.append(stage)
            plain.append(plain_qemu_boot(image, "qemu"))
            print(
                f"run {run}: minicloud {ours[-1]:.2f} s, plain qemu {plain[-1]:.2f} s", flush=True
            )
    finally:
        cluster.shutdown()
    result: dict[str, Any] = {
        "runs": args.runs,
        "minicloud_median_s": round(statistics.median(ours), 3),
        "plain_qemu_median_s": round(statistics.median(plain), 3),
        "ratio": round(statistics.median(ours) / statistics.median(plain), 3),
        "minicloud_s": [round(x, 3) for x in ours],
        "plain_qemu_s": [round(x, 3) for x in plain],
        "stages_median_s": _stage_medians(stages, ours),
    }
    print()
    print("| path | median (s) | runs (s) |")
    print("|---|---|---|")
    print(
        f"| minicloud Create → banner | {result['minicloud_median_s']} | {result['minicloud_s']} |"
    )
    print(
        f"| plain qemu-system-x86_64 → banner | {result['plain_qemu_median_s']} | "
        f"{result['plain_qemu_s']} |"
    )
    print(f"| ratio (goal ≤ 1.10) | {result['ratio']} | |")
    print()
    print("| minicloud stage (median) | ends at (s after Create) |")
    print("|---|---|")
    for stage, at in result["stages_median_s"].items():
        print(f"| {stage} | {at} |")
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


def _stage_medians(stages: list[dict[str, float]], totals: list[float]) -> dict[str, float]:
    """Median time after Create at which each stage was reported, the banner last."""
    medians = {}
    for name in STAGE_EVENTS:
        values = [stage[name] for stage in stages if name in stage]
        if values:
            medians[f"node: {name}"] = round(statistics.median(values), 3)
    medians["guest banner on the console"] = round(statistics.median(totals), 3)
    return medians


if __name__ == "__main__":
    sys.exit(main())
