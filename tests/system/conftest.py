"""System fixtures: a real control plane and node agent as processes, real libvirtd and QEMU.

The guest image comes from MINICLOUD_TEST_IMAGE (set by tools/test.sh) or is
built (and cached) by tools/build_guest_image.py. A local HTTP server serves
it as the distribution shorthands debian:11 and debian:12.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from client.api import JsonDict
from tools.cluster import BANNER, Cluster, build_guest_image, virsh, wait_until

__all__ = ["BANNER", "Cluster", "virsh", "wait_until"]
pytestmark = pytest.mark.system


@pytest.fixture(scope="session")
def guest_image() -> Path:
    """The bootable guest image (built once and cached)."""
    env_image = os.environ.get("MINICLOUD_TEST_IMAGE")
    return Path(env_image) if env_image else build_guest_image()


@pytest.fixture(scope="module")
def cluster(guest_image: Path) -> Iterator[Cluster]:
    """A running cluster for one test module; everything it made is removed afterwards.

    MINICLOUD_TEST_ROOT (default /var/lib/mc/t; keep it short) lets several
    checkouts run system tests at once.
    """
    c = Cluster.launch(guest_image, Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t")))
    try:
        yield c
    finally:
        c.shutdown()


def small_spec(name: str, **overrides: object) -> JsonDict:
    """A 1-vCPU, 256 MiB instance booting the test image as debian:11."""
    spec: JsonDict = {
        "name": name,
        "cpus": 1,
        "memory": 256,
        "disks": [{"size_gb": 2, "base": "debian:11"}],
        "side_channels": ["sf-agent"],
    }
    spec.update(overrides)
    return spec


def running(inst: JsonDict) -> bool:
    """Created and powered on."""
    return bool(inst["state"] == "created" and inst["power_state"] == "on")


def settled(inst: JsonDict) -> bool:
    """Created or failed."""
    return bool(inst["state"] in ("created", "error"))
