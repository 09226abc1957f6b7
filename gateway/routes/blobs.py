"""Blobs: list, get, data with offset and limit, search by sha512, events."""

from __future__ import annotations

from typing import Any

import grpc
import structlog
from aiohttp import web

from gateway import views
from gateway.errors import HttpError, from_rpc
from gateway.fields import INT64_MAX, Field, to_int
from gateway.routes.instances import EVENT_FIELDS, events_request
from gateway.routing import REQUEST_ID, Call, RouteTable
from protos import blobs_pb2

table = RouteTable()
log = structlog.get_logger(__name__)


@table.route(
    "GET",
    "/blobs",
    "Live blobs: all for system, else those the caller's artifacts and instances use",
    body=(Field("node", "str", doc="ignored: blobs live with the control plane"),),
)
async def list_blobs(call: Call) -> Any:
    found = await call.rpc(call.api.blobs.ListBlobs, blobs_pb2.ListBlobsRequest())
    return [views.blob(b) for b in found.blobs]


@table.route("GET", "/blobs/{uuid}/events", "A blob's events, newest first", body=EVENT_FIELDS)
async def blob_events(call: Call) -> Any:
    request = events_request(call, call.uuid_param("uuid", "blob"))
    found = await call.rpc(call.api.blobs.GetEvents, request)
    return [views.event(e) for e in found.events]


@table.route("GET", "/blobs/{uuid}", "A blob")
async def get_blob(call: Call) -> Any:
    ref = blobs_pb2.BlobRef(uuid=call.uuid_param("uuid", "blob"))
    return views.blob(await call.rpc(call.api.blobs.GetBlob, ref))


def _query_int(call: Call, name: str) -> int:
    value = to_int(call.request.query.get(name, "0"), name)
    if value < 0:
        raise HttpError(400, f"{name} must not be negative")
    return value


@table.route(
    "GET",
    "/blobs/{uuid}/data",
    "A blob's bytes from offset, at most limit of them (0: to the end)",
    query=(
        Field("offset", "int", rules={"minimum": 0, "maximum": INT64_MAX}),
        Field("limit", "int", rules={"minimum": 0, "maximum": INT64_MAX}),
    ),
    produces="application/octet-stream",
)
async def blob_data(call: Call) -> web.StreamResponse:
    request = blobs_pb2.DownloadRequest(
        uuid=call.uuid_param("uuid", "blob"),
        offset=_query_int(call, "offset"),
        limit=_query_int(call, "limit"),
    )
    stream = call.api.blobs.Download(
        request, metadata=call.metadata(), timeout=call.settings.call_timeout
    )
    iterator = aiter(stream)
    try:
        first = await anext(iterator, None)
    except grpc.aio.AioRpcError as exc:
        raise from_rpc(exc) from exc
    response = web.StreamResponse(headers={"X-Request-ID": call.request[REQUEST_ID]})
    response.content_type = "application/octet-stream"
    await response.prepare(call.request)
    sent = 0
    try:
        if first is not None:
            await response.write(first.data)
            sent += len(first.data)
            async for chunk in iterator:
                await response.write(chunk.data)
                sent += len(chunk.data)
        await response.write_eof()
    except ConnectionResetError:
        # The client hung up before the end (sf-client's artifact download stops
        # reading once it has the size it expects): not a failure of the gateway.
        stream.cancel()
        log.info("download ended by the client", blob=request.uuid, sent=sent)
    return response


@table.route(
    "GET",
    "/blob_checksums/sha512/{hash}",
    "The blob with that sha512, or null when there is none",
)
async def blob_by_sha512(call: Call) -> Any:
    request = blobs_pb2.SearchBlobsRequest(sha512=call.param("hash").lower())
    found = await call.rpc(call.api.blobs.SearchBlobs, request)
    return views.blob(found.blobs[0]) if found.blobs else None
