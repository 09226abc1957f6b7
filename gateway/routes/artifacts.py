"""Uploads (chunked, truncatable), artifacts from an upload or a blob, and labels."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from gateway import views
from gateway.errors import HttpError
from gateway.fields import NAMESPACE, Field, to_int
from gateway.routing import Call, RouteTable, read_body
from protos import artifacts_pb2, blobs_pb2, uploads_pb2

table = RouteTable()


@table.route("POST", "/upload", "Start an upload")
async def create_upload(call: Call) -> Any:
    return views.upload(await call.rpc(call.api.uploads.Create, uploads_pb2.CreateUploadRequest()))


@table.route(
    "POST",
    "/upload/{uuid}",
    "Append the raw request body to an upload; returns the total size now stored",
    body_kind="raw",
)
async def append_upload(call: Call) -> Any:
    uuid = call.uuid_param("uuid", "upload")
    data = await read_body(call.request, call.settings.max_chunk_bytes, "an upload chunk")
    found = await call.rpc(call.api.uploads.Append, uploads_pb2.AppendRequest(uuid=uuid, data=data))
    return found.size


@table.route("POST", "/upload/{uuid}/truncate/{offset}", "Cut an upload back to offset bytes")
async def truncate_upload(call: Call) -> Any:
    uuid = call.uuid_param("uuid", "upload")
    size = to_int(call.param("offset"), "offset")
    await call.rpc(call.api.uploads.Truncate, uploads_pb2.TruncateRequest(uuid=uuid, size=size))
    return None


async def artifact_view(call: Call, art: artifacts_pb2.Artifact) -> dict[str, Any]:
    """An artifact with the sizes of its versions' blobs."""
    uuids = sorted({v.blob_uuid for v in art.versions})

    async def one(uuid: str) -> blobs_pb2.Blob | None:
        try:
            found: blobs_pb2.Blob = await call.rpc(
                call.api.blobs.GetBlob, blobs_pb2.BlobRef(uuid=uuid)
            )
        except grpc.aio.AioRpcError:
            return None
        return found

    found = await asyncio.gather(*(one(u) for u in uuids))
    return views.artifact(art, {b.uuid: b for b in found if b is not None})


@table.route(
    "POST",
    "/artifacts/upload/{name}",
    "Make an upload or an existing blob the newest version of the upload artifact NAME",
    body=(
        Field("upload_uuid", "str", rules={"format": "uuid"}),
        Field("blob_uuid", "str", rules={"format": "uuid"}),
        Field("source_url", "str"),
        Field(
            "shared", "bool", doc="sharing is not supported: must be false", rules={"enum": [False]}
        ),
        Field("namespace", "str", doc="in this namespace (system only)", rules=NAMESPACE),
        Field("artifact_type", "str", doc="only image", rules={"enum": ["image"]}),
    ),
    # Exactly one of upload_uuid and blob_uuid.
    body_rules={
        "oneOf": [
            {
                "required": ["upload_uuid"],
                "properties": {"upload_uuid": {"type": "string"}, "blob_uuid": {"enum": [None]}},
            },
            {
                "required": ["blob_uuid"],
                "properties": {"blob_uuid": {"type": "string"}, "upload_uuid": {"enum": [None]}},
            },
        ]
    },
)
async def upload_artifact(call: Call) -> Any:
    body, name = call.body, call.param("name")
    if ("upload_uuid" in body) == ("blob_uuid" in body):
        raise HttpError(400, "specify exactly one of upload_uuid and blob_uuid")
    if body.get("shared"):
        raise HttpError(403, "shared artifacts are not supported")
    if body.get("artifact_type", "image") != "image":
        raise HttpError(403, "only artifacts of type image can be uploaded")
    namespace = body.get("namespace")
    if "upload_uuid" in body:
        request = uploads_pb2.ToArtifactRequest(
            upload_uuid=body["upload_uuid"], name=name, source_url=body.get("source_url", "")
        )
        art = await call.rpc(call.api.uploads.ToArtifact, request, namespace)
    else:
        from_blob = artifacts_pb2.FromBlobRequest(
            name=name,
            blob_uuid=body["blob_uuid"],
            type="upload",
            source_url=body.get("source_url", ""),
        )
        art = await call.rpc(call.api.artifacts.FromBlob, from_blob, namespace)
    return await artifact_view(call, art)


@table.route(
    "GET",
    "/artifacts",
    "The caller's artifacts",
    body=(Field("node", "str", doc="ignored: artifacts live with the control plane"),),
)
async def list_artifacts(call: Call) -> Any:
    found = await call.rpc(call.api.artifacts.ListArtifacts, artifacts_pb2.ListArtifactsRequest())
    return [await artifact_view(call, a) for a in found.artifacts]


async def find_artifact(call: Call, ref: str) -> artifacts_pb2.Artifact:
    """An artifact by UUID, TYPE:NAME, or a bare name (an upload, else a label)."""
    candidates = [ref] if len(ref) == 36 or ":" in ref else [f"upload:{ref}", f"label:{ref}"]
    for index, candidate in enumerate(candidates):
        try:
            found: artifacts_pb2.Artifact = await call.rpc(
                call.api.artifacts.GetArtifact, artifacts_pb2.ArtifactRef(ref=candidate)
            )
            return found
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.NOT_FOUND or index == len(candidates) - 1:
                raise
    raise HttpError(404, "artifact not found")


@table.route("GET", "/artifacts/{ref}", "An artifact by UUID or name")
async def get_artifact(call: Call) -> Any:
    return await artifact_view(call, await find_artifact(call, call.param("ref")))


@table.route(
    "POST",
    "/label/{name:.+}",
    "Make a blob the newest version of the label NAME",
    body=(Field("blob_uuid", "str", True),),
)
async def update_label(call: Call) -> Any:
    request = artifacts_pb2.FromBlobRequest(
        name=call.param("name"), blob_uuid=call.body["blob_uuid"], type="label"
    )
    return await artifact_view(call, await call.rpc(call.api.artifacts.FromBlob, request))
