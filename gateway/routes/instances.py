"""Instances: list, get, create, delete, delete-all, power actions, events, interfaces.

Instance objects embed their full interface objects (state, floating address,
metadata), read from the InterfaceService for instances that have any.
"""

from __future__ import annotations

import asyncio
from typing import Any

from common import sidechannels
from gateway import netdesc, views
from gateway.errors import HttpError
from gateway.fields import NAME_PATTERN, NAMESPACE, Field, to_int
from gateway.routing import REQUEST_ID, Call, RouteTable
from protos import auth_pb2, common_pb2, instances_pb2, networks_pb2

table = RouteTable()
# Shaken Fist 0.7.2's default when side_channels is null.
DEFAULT_SIDE_CHANNELS = (sidechannels.AGENT_CHANNEL,)
NOT_READY = 406
# A hot plug the node did not confirm in time may still happen: not a "retry" (406)
# but "unavailable": look at the instance's interfaces before trying again.
HOT_PLUG_ERRORS = {"DEADLINE_EXCEEDED": 503}


DISK_SCHEMA = {
    "type": "object",
    "properties": {
        "size": {"type": "integer", "minimum": 0, "maximum": 64 * 1024, "nullable": True},
        "base": {
            "type": "string",
            "nullable": True,
            "description": "DISTRO:VERSION, label:NAME, /path, http(s)://..., sf://upload/NS/NAME, "
            "sf://blob/UUID",
            "pattern": "^([A-Za-z0-9_.-]+:[A-Za-z0-9_.-]+|/[A-Za-z0-9_./-]+|https?://[A-Za-z0-9_./-]+"
            "|sf://upload/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+|sf://blob/[0-9a-f-]{36})$",
        },
        "bus": {"enum": ["virtio", "sata", "scsi", "usb", "nvme", None], "nullable": True},
        "type": {"enum": ["disk", "cdrom", None], "nullable": True},
    },
    # A blank disk needs a size; a cdrom needs a base.
    "anyOf": [
        {"required": ["base"], "properties": {"base": {"type": "string", "minLength": 1}}},
        {
            "required": ["size"],
            "properties": {
                "size": {"type": "integer", "minimum": 1},
                "type": {"enum": ["disk", None], "nullable": True},
            },
        },
    ],
}
VIDEO_SCHEMA = {
    "required": ["model", "memory"],
    "properties": {
        "model": {"enum": ["vga", "cirrus", "qxl"]},
        "memory": {"type": "integer", "minimum": 1, "maximum": 512 * 1024},
        "vdi": {"enum": ["vnc", "spice", "spiceconcurrent", None], "nullable": True},
    },
}
# Keys are 1-255 characters; the reserved keys tags and affinity have their shapes.
METADATA_SCHEMA = {
    "not": {"required": [""]},
    "properties": {
        "tags": {"type": "array", "items": {"type": "string", "minLength": 1}},
        "affinity": {
            "type": "object",
            "description": "tag -> integer weight, or require_/prefer_ with_/without_tag lists",
            "not": {"required": [""]},
            "additionalProperties": {"type": "integer"},
        },
    },
}
# Secure boot and an nvram template need UEFI.
FIRMWARE_RULES = {
    "anyOf": [
        {"required": ["uefi"], "properties": {"uefi": {"enum": [True]}}},
        {
            "properties": {
                "secure_boot": {"enum": [False, None]},
                "nvram_template": {"enum": ["", None]},
            }
        },
    ]
}

# The REST list is unpaged, as in Shaken Fist; the gateway reads it in List pages this big
# (the control plane's maximum).
PAGE_SIZE = 1000


async def every_instance(
    call: Call, include_deleted: bool = False, namespace: str | None = None
) -> list[instances_pb2.Instance]:
    """Every instance the caller sees, read a List page at a time, oldest first."""
    found: list[instances_pb2.Instance] = []
    token = ""
    while True:
        request = instances_pb2.ListInstancesRequest(
            include_deleted=include_deleted, page_size=PAGE_SIZE, page_token=token
        )
        page = await call.rpc(call.api.instances.List, request, namespace)
        found.extend(page.instances)
        token = page.next_page_token
        if not token:
            return sorted(found, key=lambda i: (i.created_at, i.uuid))


async def fetch(call: Call, ref: str, namespace: str | None = None) -> instances_pb2.Instance:
    """The instance by UUID or name (404 when missing or foreign)."""
    found: instances_pb2.Instance = await call.rpc(
        call.api.instances.Get, instances_pb2.InstanceRef(ref=ref), namespace
    )
    return found


async def fetch_created(call: Call, ref: str) -> instances_pb2.Instance:
    """The instance, or 406 (the client retries) while it is not ``created``."""
    inst = await fetch(call, ref)
    if inst.state != "created":
        raise HttpError(NOT_READY, f"instance {inst.uuid} is not ready ({inst.state})")
    return inst


async def interfaces_of(call: Call, inst: instances_pb2.Instance) -> list[views.JsonDict]:
    """The instance's interface objects in order (released ones shown as deleted)."""
    if not inst.interfaces:
        return []
    found = await call.rpc(
        call.api.interfaces.ListForInstance, instances_pb2.InstanceRef(ref=inst.uuid)
    )
    live = {i.uuid: views.interface(i) for i in found.interfaces}
    out = []
    for nic in sorted(inst.interfaces, key=lambda n: n.order):
        view = live.pop(nic.uuid, None)
        if view is None:
            view = views.interface(nic)
            view["state"] = "deleted"
        out.append(view)
    out += sorted(live.values(), key=lambda v: int(v["order"]))
    return out


async def view(call: Call, inst: instances_pb2.Instance) -> views.JsonDict:
    """An instance object with its full interfaces."""
    return views.instance(inst, await interfaces_of(call, inst))


@table.route(
    "GET",
    "/instances",
    "List the instances visible to the caller",
    body=(Field("all", "bool", doc="also deleted instances"),),
)
async def list_instances(call: Call) -> Any:
    found = await every_instance(call, include_deleted=call.body.get("all", False))
    return list(await asyncio.gather(*(view(call, i) for i in found)))


@table.route(
    "GET",
    "/instances/{ref}",
    "Get an instance by UUID (deleted ones too) or name",
    body=(Field("namespace", "str", doc="look in this namespace (system only)", rules=NAMESPACE),),
)
async def get_instance(call: Call) -> Any:
    return await view(call, await fetch(call, call.param("ref"), call.body.get("namespace")))


def _disk(index: int, item: Any) -> common_pb2.DiskSpec:
    if not isinstance(item, dict):
        raise HttpError(400, f"disk {index} must be an object (a diskspec)")
    for key in ("base", "bus", "type"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise HttpError(400, f"disk {index}: {key} must be a string")
    base = item.get("base") or ""
    return common_pb2.DiskSpec(
        size_gb=to_int(item.get("size") or 0, f"disk {index}: size"),
        base="" if base.lower() == "none" else base,
        bus=item.get("bus") or "",
        type=item.get("type") or "",
    )


def _video(item: Any) -> common_pb2.VideoSpec:
    if not isinstance(item, dict):
        raise HttpError(400, "video must be an object (a videospec)")
    if "model" not in item or "memory" not in item:
        raise HttpError(400, "video must specify model and memory")
    for key in ("model", "vdi"):
        if item.get(key) is not None and not isinstance(item[key], str):
            raise HttpError(400, f"video: {key} must be a string")
    return common_pb2.VideoSpec(
        model=item.get("model") or "",
        memory=to_int(item.get("memory") or 0, "video: memory"),
        vdi=item.get("vdi") or "",
    )


def _strings(value: list[Any], what: str) -> list[str]:
    if not all(isinstance(v, str) for v in value):
        raise HttpError(400, f"{what} must be a list of strings")
    return value


@table.route(
    "POST",
    "/instances",
    "Create an instance",
    body=(
        Field("name", "str", True, "DNS-safe host name", rules={"pattern": NAME_PATTERN}),
        Field("cpus", "intlike", True, rules={"minimum": 1, "maximum": 64}),
        Field("memory", "intlike", True, "MiB", rules={"minimum": 16, "maximum": 1024 * 1024}),
        Field(
            "network",
            "list",
            doc="netdescs: network_uuid (UUID or name), address, macaddress, model, float",
            rules={"items": netdesc.SCHEMA},
        ),
        Field(
            "disk",
            "list",
            True,
            "diskspecs: size (GB), base, bus, type",
            rules={"minItems": 1, "maxItems": 32, "items": DISK_SCHEMA},
        ),
        Field("ssh_key", "str"),
        Field(
            "user_data",
            "str",
            doc="base64, at most 64 KiB once decoded",
            rules={
                "format": "byte",
                "maxLength": 87384,
                "pattern": "^([A-Za-z0-9+/]{4})*([A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$",
            },
        ),
        Field("namespace", "str", doc="create in this namespace (system only)", rules=NAMESPACE),
        Field("video", "dict", doc="videospec: model, memory (KiB), vdi", rules=VIDEO_SCHEMA),
        Field(
            "configdrive",
            "str",
            doc="openstack-disk or none",
            rules={"enum": ["openstack-disk", "none", ""]},
        ),
        Field("metadata", "dict", rules=METADATA_SCHEMA),
        Field(
            "side_channels",
            "list",
            doc="null: the default (sf-agent); []: none",
            rules={"items": {"type": "string", "pattern": NAME_PATTERN}},
        ),
        Field("uefi", "bool"),
        Field("secure_boot", "bool"),
        Field(
            "nvram_template",
            "str",
            doc="an absolute path or a TYPE:NAME reference (needs uefi)",
            rules={"pattern": "^(/.*|.*:.*)$"},
        ),
        Field("placed_on", "str", doc="on this node (system only, as sf-client's -p)"),
    ),
    body_rules=FIRMWARE_RULES,
    # Nodes reconnecting (after a control plane restart, say): Shaken Fist's answer when
    # there is no room, which its client reports as such.
    overrides={"UNAVAILABLE": 507},
)
async def create_instance(call: Call) -> Any:
    body = call.body
    spec = common_pb2.InstanceSpec(
        name=body["name"],
        cpus=body["cpus"],
        memory=body["memory"],
        disks=[_disk(i, d) for i, d in enumerate(body["disk"])],
        networks=netdesc.parse_all(body.get("network", [])),
        ssh_key=body.get("ssh_key", ""),
        user_data=body.get("user_data", ""),
        side_channels=_strings(
            body.get("side_channels", list(DEFAULT_SIDE_CHANNELS)), "side_channels"
        ),
        uefi=body.get("uefi", False),
        secure_boot=body.get("secure_boot", False),
        nvram_template=body.get("nvram_template", ""),
        configdrive=body.get("configdrive", ""),
    )
    if "video" in body:
        spec.video.CopyFrom(_video(body["video"]))
    if body.get("metadata"):
        spec.metadata.update(body["metadata"])
    # The request's id is the create's idempotency key: a client retrying with the same
    # X-Request-ID gets the instance its first try made.
    request = instances_pb2.CreateInstanceRequest(
        spec=spec,
        client_request_id=call.request[REQUEST_ID],
        placed_on=body.get("placed_on") or "",
    )
    created = await call.rpc(call.api.instances.Create, request, body.get("namespace"))
    return await view(call, created)


@table.route(
    "DELETE",
    "/instances/{ref}",
    "Start deleting an instance (poll it until its state is deleted)",
    body=(Field("namespace", "str", doc="in this namespace (system only)", rules=NAMESPACE),),
)
async def delete_instance(call: Call) -> Any:
    namespace = call.body.get("namespace")
    inst = await fetch(call, call.param("ref"), namespace)
    if inst.state == "deleted":
        raise HttpError(404, "instance not found")
    request = instances_pb2.InstanceRef(ref=inst.uuid)
    return await view(call, await call.rpc(call.api.instances.Delete, request, namespace))


async def delete_all_namespace(call: Call) -> str | None:
    """The namespace a delete-all empties: confirm must be true, system must name one."""
    if call.body.get("confirm") is not True:
        raise HttpError(400, "parameter confirm is not set true")
    namespace: str | None = call.body.get("namespace")
    if not namespace:
        # Only system sees the system namespace; it must say which namespace to empty.
        visible = await call.rpc(call.api.namespaces.List, auth_pb2.ListNamespacesRequest())
        if any(ns.name == "system" for ns in visible.namespaces):
            raise HttpError(400, "system user must specify parameter namespace")
    return namespace


@table.route(
    "DELETE",
    "/instances",
    "Delete every instance of a namespace",
    body=(
        Field("confirm", "bool", True, "must be true", rules={"enum": [True]}),
        Field("namespace", "str", True, "the namespace to empty (system must name one)", NAMESPACE),
    ),
)
async def delete_all_instances(call: Call) -> Any:
    namespace = await delete_all_namespace(call)
    found = await every_instance(call, namespace=namespace)
    targets = [i for i in found if i.state != "deleted"]
    if namespace and any(i.namespace != namespace for i in targets):
        raise HttpError(401, "you cannot delete other namespaces")
    deleted = []
    for inst in targets:
        ref = instances_pb2.InstanceRef(ref=inst.uuid)
        await call.rpc(call.api.instances.Delete, ref, inst.namespace)
        deleted.append(inst.uuid)
    return deleted


def _power(path: str, method_name: str, summary: str) -> None:
    async def handler(call: Call) -> Any:
        inst = await fetch_created(call, call.param("ref"))
        method = getattr(call.api.instances, method_name)
        await call.rpc(method, instances_pb2.InstanceRef(ref=inst.uuid))
        return None

    handler.__name__ = method_name
    table.route("POST", f"/instances/{{ref}}/{path}", summary)(handler)


_power("rebootsoft", "SoftReboot", "Soft (ACPI) reboot")
_power("reboothard", "HardReboot", "Hard reset")
_power("poweron", "PowerOn", "Power on")
_power("poweroff", "PowerOff", "Power off")
_power("pause", "Pause", "Pause")
_power("unpause", "Unpause", "Unpause")


# Shaken Fist's event types (the control plane's controlplane.retention.EVENT_TYPES).
EVENT_TYPES = ("audit", "mutate", "status", "usage", "resources", "prune", "historic")
EVENT_FIELDS = (
    Field(
        "event_type",
        "str",
        doc="only events of this type (empty: every type)",
        rules={"enum": ["", *EVENT_TYPES]},
    ),
    Field(
        "limit",
        "intlike",
        doc="at most this many (default 100, at most 1000)",
        rules={"minimum": 1, "maximum": 1000},
    ),
)


def events_request(call: Call, ref: str = "") -> instances_pb2.GetEventsRequest:
    """The events request of an ``/<plural>/<ref>/events`` call (400 for a bad limit); ref
    when given, else the path's ``ref``."""
    limit = call.body.get("limit", 100)
    if not 1 <= limit <= 1000:
        raise HttpError(400, "limit must be between 1 and 1000")
    return instances_pb2.GetEventsRequest(
        ref=ref or call.param("ref"), event_type=call.body.get("event_type", ""), limit=limit
    )


@table.route(
    "GET", "/instances/{ref}/events", "An instance's events, newest first", body=EVENT_FIELDS
)
async def instance_events(call: Call) -> Any:
    request = events_request(call)
    found = await call.rpc(call.api.instances.GetEvents, request)
    return [views.event(e) for e in found.events]


@table.route("GET", "/instances/{ref}/interfaces", "An instance's network interfaces, in order")
async def instance_interfaces(call: Call) -> Any:
    return await interfaces_of(call, await fetch(call, call.param("ref")))


@table.route(
    "POST",
    "/instances/{ref}/interfaces",
    "Hot plug a network interface into a running instance",
    body=(Field("network", "dict", True, "a netdesc", rules=netdesc.SCHEMA),),
    overrides=HOT_PLUG_ERRORS,
)
async def hot_plug_interface(call: Call) -> Any:
    spec = netdesc.parse(call.body["network"])
    inst = await fetch(call, call.param("ref"))
    if inst.state != "created":
        raise HttpError(NOT_READY, f"instance in invalid state for hot plug ({inst.state})")
    request = networks_pb2.AttachInterfaceRequest(instance=inst.uuid, network=spec)
    return views.interface(await call.rpc(call.api.interfaces.Attach, request))
