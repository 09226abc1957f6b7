"""Instance snapshots, as Shaken Fist serves them: snapshot the disks, list the snapshots.

``POST /instances/<ref>/snapshot`` snapshots the first disk, every disk with
``all``, or the named ``device``, as Shaken Fist; it answers once they are done
(Shaken Fist answers at once and the client polls the list, which finds
them ``created`` on its first look): one object per device with the
artifact and blob. ``GET`` lists every kept version, newest last per device.
"""

from __future__ import annotations

from typing import Any

from common.nodewire.devices import spec_device_names
from gateway.fields import NAME_PATTERN, Field
from gateway.routes.instances import fetch, fetch_created
from gateway.routing import Call, RouteTable
from protos import instances_pb2

table = RouteTable()
# A snapshot copies whole disks: it may take much longer than an ordinary call.
SNAPSHOT_TIMEOUT = 1800.0
DEVICE = {"pattern": "^[a-z]{2,4}$"}


@table.route(
    "POST",
    "/instances/{ref}/snapshot",
    "Snapshot the instance's disks (or one device) into snapshot artifacts",
    body=(
        Field("all", "bool", doc="every disk (default: the first disk, or the device named)"),
        Field("device", "str", doc="one disk by its device name, e.g. vda", rules=DEVICE),
        Field("thin", "bool", doc="an overlay on the disk's base blob, not a standalone image"),
        Field(
            "label_name",
            "str",
            doc="also make the snapshot the newest version of this label (one disk)",
            rules={"pattern": NAME_PATTERN},
        ),
    ),
)
async def snapshot_instance(call: Call) -> Any:
    inst = await fetch_created(call, call.param("ref"))
    device = call.body.get("device", "")
    if not call.body.get("all") and not device:
        device = first_disk(inst)  # Shaken Fist: disk 0 unless all or a device is asked for
    request = instances_pb2.SnapshotInstanceRequest(
        ref=inst.uuid,
        device="" if call.body.get("all") else device,
        thin=call.body.get("thin", False),
        label_name=call.body.get("label_name", ""),
    )
    timeout = max(call.settings.call_timeout, SNAPSHOT_TIMEOUT)
    reply = await call.api.instances.Snapshot(request, metadata=call.metadata(), timeout=timeout)
    out: dict[str, Any] = {}
    for taken in reply.snapshots:
        out[taken.device] = {
            "source_url": taken.source_url,
            "artifact_uuid": taken.artifact_uuid,
            "artifact_index": taken.artifact_index,
            "blob_uuid": taken.blob_uuid,
            "consistency": taken.consistency,
            "note": taken.note,
            "frozen": list(taken.frozen),
            "thin": taken.thin,
            "size": taken.size,
        }
        if taken.label_uuid:
            out[taken.device]["label_uuid"] = taken.label_uuid
    return out


def first_disk(inst: instances_pb2.Instance) -> str:
    """The device name of the instance's first disk (not a cdrom); "" when it has none."""
    disks = inst.spec.disks
    names = spec_device_names(
        ((d.bus or "virtio", d.type or "disk") for d in disks), inst.spec.configdrive != "none"
    )
    return next((n for n, d in zip(names, disks, strict=True) if (d.type or "disk") == "disk"), "")


@table.route("GET", "/instances/{ref}/snapshot", "The kept snapshots of the instance's disks")
async def list_snapshots(call: Call) -> Any:
    inst = await fetch(call, call.param("ref"))
    reply = await call.rpc(
        call.api.instances.ListSnapshots, instances_pb2.InstanceRef(ref=inst.uuid)
    )
    return [
        {
            "uuid": s.blob_uuid,
            "blob_uuid": s.blob_uuid,
            "artifact_uuid": s.artifact_uuid,
            "artifact_name": s.source_url,
            "source_url": s.source_url,
            "device": s.device,
            "index": s.index,
            "created": s.created,
            "size": s.size,
            "state": s.state,
        }
        for s in reply.snapshots
    ]
