"""Console log, VDI helper file and screenshots, through the ConsoleService."""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.errors import HttpError
from gateway.fields import INT64_MAX, Field
from gateway.routes.instances import fetch, fetch_created
from gateway.routing import Call, RouteTable
from protos import consoles_pb2, instances_pb2

table = RouteTable()


@table.route(
    "GET",
    "/instances/{ref}/consoledata",
    "The last length bytes of the serial console log (raw bytes)",
    body=(
        Field(
            "length",
            "intlike",
            doc="bytes (default 10240; -1 for the whole log)",
            rules={"minimum": -1, "maximum": INT64_MAX},
        ),
    ),
    produces="application/octet-stream",
)
async def console_data(call: Call) -> Any:
    length = call.body.get("length", 10240)
    if length < -1:
        raise HttpError(400, "length must be -1 or more")
    inst = await fetch(call, call.param("ref"))
    request = consoles_pb2.ConsoleDataRequest(ref=inst.uuid, length=length)
    found = await call.rpc(call.api.consoles.GetConsoleData, request)
    return web.Response(body=found.data, content_type="application/octet-stream")


@table.route("DELETE", "/instances/{ref}/consoledata", "Clear the serial console log")
async def clear_console(call: Call) -> Any:
    inst = await fetch(call, call.param("ref"))
    await call.rpc(call.api.consoles.ClearConsoleData, instances_pb2.InstanceRef(ref=inst.uuid))
    return None


@table.route(
    "GET",
    "/instances/{ref}/vdiconsolehelper",
    "A virt-viewer (.vv) file for the instance's console",
    produces="application/x-virt-viewer",
)
async def vdi_console_helper(call: Call) -> Any:
    inst = await fetch(call, call.param("ref"))
    found = await call.rpc(
        call.api.consoles.VdiConsoleHelper, instances_pb2.InstanceRef(ref=inst.uuid)
    )
    return web.Response(text=found.vv, content_type="application/x-virt-viewer")


@table.route(
    "GET",
    "/instances/{ref}/screenshot",
    "Capture the display into a blob; returns the blob's UUID",
)
async def screenshot(call: Call) -> Any:
    inst = await fetch_created(call, call.param("ref"))
    found = await call.rpc(call.api.consoles.Screenshot, instances_pb2.InstanceRef(ref=inst.uuid))
    return found.blob_uuid
