"""Snapshotting a running guest's disk and booting a second instance from the snapshot."""

from __future__ import annotations

import pytest

from tests.system.conftest import Cluster, small_spec, virsh
from tests.system.test_move import agent_ready, run

pytestmark = pytest.mark.system


def test_a_frozen_snapshot_of_a_running_guest_boots_with_its_file(cluster: Cluster) -> None:
    """Write and sync a file, snapshot the running guest (frozen by its agent), boot a copy
    from the snapshot's label and read the file there; the source runs on one file again."""
    with cluster.client() as api:
        inst = api.wait(api.create(small_spec("snapsrc"))["uuid"], agent_ready, timeout=180)
        assert inst["state"] == "created", cluster.logs()
        uuid = inst["uuid"]
        assert run(api, uuid, "echo snapshot-intact > /root/note && sync")["return-code"] == 0

        (snap,) = api.snapshot(uuid, label="snapgold")

        assert (snap["device"], snap["consistency"]) == ("vda", "frozen"), snap
        assert "/" in snap["frozen"]
        assert snap["source_url"] == f"sf://snapshot/{uuid}/vda"
        disks = virsh("domblklist", f"mc-{uuid}").stdout
        assert "disk0.qcow2" in disks and "overlay" not in disks
        assert run(api, uuid, "touch /root/thawed")["return-code"] == 0  # not frozen any more
        spec = small_spec("snapcopy", disks=[{"size_gb": 2, "base": "label:snapgold"}])
        copy = api.wait(api.create(spec)["uuid"], agent_ready, timeout=180)
        assert copy["state"] == "created", cluster.logs()
        assert run(api, copy["uuid"], "cat /root/note")["stdout"] == "snapshot-intact\n"
        assert [s["index"] for s in api.snapshots(uuid)] == [1]
