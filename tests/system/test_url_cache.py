"""The URL cache on a real cluster: the guest image, served from loopback, cached by
sf-client through the gateway, boots a real QEMU guest by label."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.system.conftest import Cluster, running, settled, small_spec
from tests.system.rest_helpers import sf_client

pytestmark = pytest.mark.system


@pytest.fixture(scope="module")
def cluster(guest_image: Path) -> Iterator[Cluster]:
    """A cluster whose control plane may fetch from its own image server on 127.0.0.1."""
    c = Cluster.launch(
        guest_image,
        Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t")),
        controlplane_env={"MINICLOUD_ARTIFACT_FETCH_ALLOW": "127.0.0.1/32"},
    )
    try:
        yield c
    finally:
        c.shutdown()


def test_a_cached_guest_image_boots_by_label(cluster: Cluster) -> None:
    """sf-client artifact cache fetches the image once into a blob; label:NAME boots it."""
    url = f"http://127.0.0.1:{cluster.image_port}/debian-11.qcow2"
    proc = sf_client(cluster, "artifact", "cache", url)
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    with cluster.client() as api:
        art = api.wait_fetch("upload:debian-11.qcow2", timeout=300)
        assert art["state"] == "created", (art, cluster.logs())
        assert int(art["fetch"]["size"]) == cluster.image.stat().st_size
        api.label_blob("guest", art["blob_uuid"])
        spec = small_spec("fromurl", disks=[{"size_gb": 2, "base": "label:guest"}])
        inst = api.wait(api.create(spec)["uuid"], settled, timeout=180)
        assert running(inst), cluster.logs()
        assert inst["spec"]["disks"][0]["base"] == f"sf://blob/{art['blob_uuid']}"
        cluster.wait_banner(inst["uuid"])
        api.delete(inst["uuid"])
