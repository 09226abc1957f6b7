"""Instance snapshots through the real shakenfist-client: snapshot, the label workflow, list."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from controlplane.app import ControlPlane
from tests.component.conftest import Api, FakeNode
from tests.component.test_gateway import start_gateway
from tests.component.test_gateway_artifacts import Sf
from tests.component.test_snapshots import running


@pytest.fixture
async def gateway(plane: ControlPlane) -> AsyncIterator[str]:
    """The URL of a gateway in front of the plane."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    yield url
    await runner.cleanup()


async def test_snapshot_label_and_list_with_the_client(
    api: Api, node: FakeNode, gateway: str
) -> None:
    """snapshot_instance answers per device, labels the blob, and the list shows it created."""
    inst = await running(api)
    sf = Sf(gateway)
    out = await sf("snapshot_instance", "vm1", device="vda", label_name="golden")
    assert out["vda"]["source_url"] == f"sf://snapshot/{inst.uuid}/vda"
    assert out["vda"]["artifact_index"] == 1
    blob = out["vda"]["blob_uuid"]
    assert out["label"]["blob_uuid"] == blob
    listed = await sf("get_instance_snapshots", inst.uuid)
    assert [(s["device"], s["blob_uuid"], s["state"]) for s in listed] == [("vda", blob, "created")]
    out = await sf("snapshot_instance", "vm1", all=True)
    assert list(out) == ["vda"] and out["vda"]["artifact_index"] == 2


async def test_the_first_disk_by_default_and_every_disk_with_all(
    api: Api, node: FakeNode, gateway: str
) -> None:
    """As Shaken Fist: disk 0 unless all; a label with delete-after-label keeps only the label."""
    await running(api, disks=[{"size_gb": 1, "base": "debian:11"}, {"size_gb": 1}])
    sf = Sf(gateway)
    assert list(await sf("snapshot_instance", "vm1")) == ["vda"]
    assert sorted(await sf("snapshot_instance", "vm1", all=True)) == ["vda", "vdc"]
    out = await sf("snapshot_instance", "vm1", label_name="keep", delete_snapshot_after_label=True)
    assert out["label"]["blob_uuid"] == out["vda"]["blob_uuid"]
    listed = await sf("get_instance_snapshots", "vm1")
    assert [s["device"] for s in listed] == ["vdc"]  # the vda artifact went with its versions
