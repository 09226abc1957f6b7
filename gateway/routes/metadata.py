"""Metadata on every object type: ``/<plural>/<ref>/metadata[/<key>]``."""

from __future__ import annotations

from typing import Any

from google.protobuf import struct_pb2

from gateway import views
from gateway.errors import HttpError
from gateway.fields import Field
from gateway.routes.artifacts import find_artifact
from gateway.routing import Call, RouteTable
from protos import metadata_pb2

table = RouteTable()
# REST plural -> MetadataService object type.
OBJECT_TYPES = {
    "instances": "instance",
    "blobs": "blob",
    "artifacts": "artifact",
    "networks": "network",
    "interfaces": "interface",
    "auth/namespaces": "namespace",
    "nodes": "node",
}


# A value must be given: null, "", [] and {} are refused (Shaken Fist's "no value specified").
VALUE: dict[str, Any] = {
    "description": "any JSON but null, an empty string, list or object",
    "not": {"enum": ["", [], {}, None]},
}


def _value(value: Any) -> struct_pb2.Value:
    holder = struct_pb2.Struct()
    holder.update({"v": value})
    return holder.fields["v"]


def _routes(plural: str, object_type: str) -> None:
    # Interfaces are named by UUID only; the other objects by UUID or name.
    param = "uuid" if object_type == "interface" else "ref"
    base = f"/{plural}/{{{param}}}/metadata"

    async def ref_of(call: Call) -> str:
        if object_type == "interface":
            return call.uuid_param("uuid", "interface")
        ref = call.param("ref")
        if object_type == "artifact":
            return (await find_artifact(call, ref)).uuid
        return ref

    async def get_all(call: Call) -> Any:
        ref = metadata_pb2.MetadataRef(object_type=object_type, ref=await ref_of(call))
        return views.struct_dict((await call.rpc(call.api.metadata.Get, ref)).metadata)

    async def set_one(call: Call, key: str, value: Any) -> Any:
        if not key:
            raise HttpError(400, "no key specified")
        if value in (None, "", [], {}):
            raise HttpError(400, "no value specified")
        request = metadata_pb2.SetMetadataRequest(
            object_type=object_type, ref=await ref_of(call), key=key, value=_value(value)
        )
        await call.rpc(call.api.metadata.Set, request)
        return None

    async def put_key(call: Call) -> Any:
        return await set_one(call, call.param("key"), call.body.get("value"))

    async def post_key(call: Call) -> Any:
        return await set_one(call, call.body.get("key", ""), call.body.get("value"))

    async def delete_key(call: Call) -> Any:
        request = metadata_pb2.DeleteMetadataRequest(
            object_type=object_type, ref=await ref_of(call), key=call.param("key")
        )
        await call.rpc(call.api.metadata.Delete, request)
        return None

    table.route("GET", base, f"Every metadata key of a {object_type}")(get_all)
    table.route(
        "PUT",
        base + "/{key}",
        f"Set one metadata key of a {object_type}",
        body=(Field("value", "any", True, rules=VALUE),),
    )(put_key)
    table.route(
        "POST",
        base,
        f"Set one metadata key of a {object_type}",
        body=(
            Field("key", "str", True, rules={"minLength": 1, "maxLength": 255}),
            Field("value", "any", True, rules=VALUE),
        ),
    )(post_key)
    table.route("DELETE", base + "/{key}", f"Delete one metadata key of a {object_type}")(
        delete_key
    )


for _plural, _type in OBJECT_TYPES.items():
    _routes(_plural, _type)
