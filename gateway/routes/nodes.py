"""Nodes, as Shaken Fist serves them to administrators: list, get, delete, events.

Every route is the system namespace's: another caller gets 401, as from
Shaken Fist's ``caller_is_admin``. Node metadata is in routes.metadata.
"""

from __future__ import annotations

from typing import Any

from gateway import views
from gateway.routes.instances import EVENT_FIELDS, events_request
from gateway.routing import Call, RouteTable
from protos import nodes_pb2

table = RouteTable()


@table.route("GET", "/nodes", "List every node, deleted ones included (system only)")
async def list_nodes(call: Call) -> Any:
    found = await call.rpc(call.api.nodes.ListNodes, nodes_pb2.ListNodesRequest())
    return [views.node(n) for n in found.nodes]


@table.route("GET", "/nodes/{ref}", "A node by name, with its instances (system only)")
async def get_node(call: Call) -> Any:
    ref = nodes_pb2.NodeRef(name=call.param("ref"))
    return views.node(await call.rpc(call.api.nodes.GetNode, ref))


@table.route(
    "DELETE",
    "/nodes/{ref}",
    "Delete a missing node or one without instances (409 otherwise); returns it",
)
async def delete_node(call: Call) -> Any:
    ref = nodes_pb2.NodeRef(name=call.param("ref"))
    return views.node(await call.rpc(call.api.nodes.DeleteNode, ref))


@table.route("GET", "/nodes/{ref}/events", "A node's events, newest first", body=EVENT_FIELDS)
async def node_events(call: Call) -> Any:
    events = events_request(call)
    request = nodes_pb2.GetNodeEventsRequest(
        name=call.param("ref"), event_type=events.event_type, limit=events.limit
    )
    found = await call.rpc(call.api.nodes.GetNodeEvents, request)
    return [views.event(e) for e in found.events]
