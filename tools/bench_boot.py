"""Benchmark: create → guest booted, through minicloud vs a plain QEMU command.

Both boot the same guest image (a fresh qcow2 overlay each run) under the
same accelerator, memory and vCPUs, and stop the clock when the serial
console shows the guest's "boot complete" banner. minicloud's figure starts
at the Create call, so it includes validation, placement, the node stream,
disk preparation, domain definition and libvirt start-up.

    .venv/bin/python tools/bench_boot.py --runs 5

Runs alternate between the two so machine load affects both alike; the
median of each and their ratio are printed (goal: ratio ≤ 1.10).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tools.cluster import BANNER, Cluster, build_guest_image, wait_until

MEMORY_MB = 256
POLL = 0.02  # seconds between console checks, the same for both paths


def minicloud_boot(cluster: Cluster, run: int) -> float:
    """Seconds from Create to the banner on the console, for one instance."""
    with cluster.client() as api:
        started = time.monotonic()
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
        api.delete(uuid)
        api.wait(uuid, lambda i: i["state"] == "deleted", timeout=60)
    return elapsed


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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, help="also write the results as JSON here")
    args = parser.parse_args()
    image = build_guest_image()
    cluster = Cluster.launch(image, Path("/var/lib/mc/b"))
    try:
        minicloud_boot(cluster, 0)  # warm-up: fills the node's image cache
        ours, plain = [], []
        for run in range(1, args.runs + 1):
            ours.append(minicloud_boot(cluster, run))
            plain.append(plain_qemu_boot(image, "qemu"))
            print(
                f"run {run}: minicloud {ours[-1]:.2f} s, plain qemu {plain[-1]:.2f} s", flush=True
            )
    finally:
        cluster.shutdown()
    result = {
        "runs": args.runs,
        "minicloud_median_s": round(statistics.median(ours), 3),
        "plain_qemu_median_s": round(statistics.median(plain), 3),
        "ratio": round(statistics.median(ours) / statistics.median(plain), 3),
        "minicloud_s": [round(x, 3) for x in ours],
        "plain_qemu_s": [round(x, 3) for x in plain],
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
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
