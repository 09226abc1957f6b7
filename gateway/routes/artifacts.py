"""Uploads (chunked, truncatable), artifacts from an upload, a blob or a URL, labels,
deletion, versions and events."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc

from gateway import views
from gateway.errors import HttpError
from gateway.fields import NAME_PATTERN, NAMESPACE, Field, to_int
from gateway.routes.instances import EVENT_FIELDS, delete_all_namespace, events_request
from gateway.routing import Call, RouteTable, read_body
from protos import artifacts_pb2, auth_pb2, blobs_pb2, uploads_pb2

table = RouteTable()
# A shared system artifact changed by another namespace: Shaken Fist's 403.
WRITE_ERRORS = {"PERMISSION_DENIED": 403}
# An http(s) URL the control plane takes: a host (a name or an IPv4 address; no
# credentials), an optional port, then printable ASCII (non-ASCII must be %-encoded).
PORT = "(6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[0-9]{1,4})"
URL = f"^[hH][tT][tT][pP][sS]?://[A-Za-z0-9._~-]+(:{PORT})?([/?#][!-~]*)?$"


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


async def blobs_of(call: Call, uuids: list[str]) -> dict[str, blobs_pb2.Blob]:
    """The blobs with these UUIDs that can be read, by UUID."""

    async def one(uuid: str) -> blobs_pb2.Blob | None:
        try:
            found: blobs_pb2.Blob = await call.rpc(
                call.api.blobs.GetBlob, blobs_pb2.BlobRef(uuid=uuid)
            )
        except grpc.aio.AioRpcError:
            return None
        return found

    found = await asyncio.gather(*(one(u) for u in sorted(set(uuids))))
    return {b.uuid: b for b in found if b is not None}


async def artifact_view(call: Call, art: artifacts_pb2.Artifact) -> dict[str, Any]:
    """An artifact with the sizes of its versions' blobs."""
    return views.artifact(art, await blobs_of(call, [v.blob_uuid for v in art.versions]))


async def versions_view(call: Call, art: artifacts_pb2.Artifact) -> list[dict[str, Any]]:
    """Shaken Fist's versions list: each version's blob object with its ``index``."""
    found = await blobs_of(call, [v.blob_uuid for v in art.versions])
    out = []
    for version in art.versions:
        blob = found.get(version.blob_uuid)
        view = views.blob(blob) if blob is not None else {"uuid": version.blob_uuid}
        out.append({**view, "index": version.index})
    return out


@table.route(
    "POST",
    "/artifacts/upload/{name}",
    "Make an upload or an existing blob the newest version of the upload artifact NAME",
    body=(
        Field("upload_uuid", "str", rules={"format": "uuid"}),
        Field("blob_uuid", "str", rules={"format": "uuid"}),
        Field("source_url", "str"),
        Field("shared", "bool", doc="share it with every namespace (system artifacts only)"),
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
        await check_sharable(call, body.get("namespace"))
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
    if body.get("shared") and not art.shared:
        share = artifacts_pb2.ArtifactRef(ref=art.uuid)
        art = await call.rpc(call.api.artifacts.Share, share, namespace)
    return await artifact_view(call, art)


async def check_sharable(call: Call, namespace: str | None) -> None:
    """403 unless the artifact would be made in the system namespace (by system)."""
    visible = await call.rpc(call.api.namespaces.List, auth_pb2.ListNamespacesRequest())
    if "system" not in {ns.name for ns in visible.namespaces} or namespace not in (
        None,
        "",
        "system",
    ):
        raise HttpError(403, "only artifacts of the system namespace can be shared")


@table.route(
    "POST",
    "/artifacts",
    "Cache an image from an http(s) URL: answers the artifact at once, fetches it in the"
    " background (state initial, then created, or error with the reason in its events)",
    body=(
        Field("url", "str", True, "an http or https URL naming a host", rules={"pattern": URL}),
        Field("shared", "bool", doc="share it with every namespace (system artifacts only)"),
        Field("namespace", "str", doc="in this namespace (system only)", rules=NAMESPACE),
        Field(
            "name",
            "str",
            doc="the artifact's name (default: made from the URL's last path segment)",
            rules={"pattern": NAME_PATTERN},
        ),
    ),
    # Shaken Fist answers 403 for a shared artifact asked by anyone but system.
    overrides={"FAILED_PRECONDITION": 403},
)
async def cache_artifact(call: Call) -> Any:
    body = call.body
    request = artifacts_pb2.CacheUrlRequest(
        url=body["url"], name=body.get("name") or "", shared=bool(body.get("shared"))
    )
    art = await call.rpc(call.api.artifacts.CacheUrl, request, body.get("namespace"))
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


@table.route(
    "DELETE",
    "/artifacts/{ref}",
    "Delete an artifact and all its versions (blobs nothing else keeps are freed)",
    overrides=WRITE_ERRORS,
)
async def delete_artifact(call: Call) -> Any:
    art = await find_artifact(call, call.param("ref"))
    deleted = await call.rpc(
        call.api.artifacts.DeleteArtifact, artifacts_pb2.ArtifactRef(ref=art.uuid)
    )
    return await artifact_view(call, deleted)


@table.route(
    "DELETE",
    "/artifacts",
    "Delete every artifact of a namespace; returns their UUIDs",
    body=(
        Field("confirm", "bool", True, "must be true", rules={"enum": [True]}),
        Field("namespace", "str", True, "the namespace to empty (system must name one)", NAMESPACE),
    ),
)
async def delete_all_artifacts(call: Call) -> Any:
    namespace = await delete_all_namespace(call)
    if namespace:
        # Only system sees other namespaces: anyone else may name only their own.
        visible = await call.rpc(call.api.namespaces.List, auth_pb2.ListNamespacesRequest())
        names = {ns.name for ns in visible.namespaces}
        if "system" not in names and namespace not in names:
            raise HttpError(401, "you cannot delete other namespaces")
    request = artifacts_pb2.DeleteAllArtifactsRequest(confirm=True)
    deleted = await call.rpc(call.api.artifacts.DeleteAllArtifacts, request, namespace)
    return [a.uuid for a in deleted.artifacts]


@table.route("GET", "/artifacts/{ref}/versions", "An artifact's versions, oldest first")
async def artifact_versions(call: Call) -> Any:
    return await versions_view(call, await find_artifact(call, call.param("ref")))


@table.route(
    "POST",
    "/artifacts/{ref}/versions",
    "Set how many versions an artifact keeps (the oldest beyond it are deleted now)",
    body=(
        Field("max_versions", "intlike", True, "1 to 1000", rules={"minimum": 1, "maximum": 1000}),
    ),
    overrides=WRITE_ERRORS,
)
async def set_max_versions(call: Call) -> Any:
    art = await find_artifact(call, call.param("ref"))
    request = artifacts_pb2.SetMaxVersionsRequest(
        ref=art.uuid, max_versions=call.body["max_versions"]
    )
    if not 1 <= request.max_versions <= 1000:
        raise HttpError(400, "max_versions must be between 1 and 1000")
    return await artifact_view(call, await call.rpc(call.api.artifacts.SetMaxVersions, request))


@table.route(
    "DELETE",
    "/artifacts/{ref}/versions/{version}",
    "Delete one version of an artifact (the last one deletes the artifact); returns the rest",
    overrides=WRITE_ERRORS,
)
async def delete_artifact_version(call: Call) -> Any:
    index = to_int(call.param("version"), "version")
    if not 1 <= index < 1 << 31:
        raise HttpError(400, f"version {index} is not a version index")
    art = await find_artifact(call, call.param("ref"))
    request = artifacts_pb2.DeleteVersionRequest(ref=art.uuid, index=index)
    return await versions_view(call, await call.rpc(call.api.artifacts.DeleteVersion, request))


@table.route(
    "GET", "/artifacts/{ref}/events", "An artifact's events, newest first", body=EVENT_FIELDS
)
async def artifact_events(call: Call) -> Any:
    art = await find_artifact(call, call.param("ref"))
    request = events_request(call)
    request.ref = art.uuid
    found = await call.rpc(call.api.artifacts.GetEvents, request)
    return [views.event(e) for e in found.events]


def _share(path: str, method_name: str, summary: str) -> None:
    async def handler(call: Call) -> Any:
        art = await find_artifact(call, call.param("ref"))
        method = getattr(call.api.artifacts, method_name)
        return await artifact_view(
            call, await call.rpc(method, artifacts_pb2.ArtifactRef(ref=art.uuid))
        )

    handler.__name__ = f"{path}_artifact"
    table.route("POST", f"/artifacts/{{ref}}/{path}", summary, overrides=SHARE_ERRORS)(handler)


# Shaken Fist answers 403 for sharing what cannot be shared, or by anyone but system.
SHARE_ERRORS = {**WRITE_ERRORS, "FAILED_PRECONDITION": 403}
_share("share", "Share", "Share a system artifact with every namespace")
_share("unshare", "Unshare", "Stop sharing a system artifact")
