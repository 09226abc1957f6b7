"""Networks and interfaces: list, get, create, delete, delete-all, addresses, events, float.

Network delete is synchronous (the old shape): ``network-delete-async`` is not
advertised, so the client takes the answer as the deleted network. The
floating pool is the pseudo-network ``floating``, which cannot be deleted.
"""

from __future__ import annotations

from typing import Any

import grpc

from gateway import views
from gateway.errors import HttpError
from gateway.fields import NAME_PATTERN, NAMESPACE, Field
from gateway.routes.instances import EVENT_FIELDS, delete_all_namespace, events_request
from gateway.routing import Call, RouteTable
from protos import networks_pb2

table = RouteTable()
FLOATING = "floating"
# Shaken Fist refuses deleting a network in use with 403.
IN_USE = {"FAILED_PRECONDITION": 403}
OCTET = "(25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
NETBLOCK = f"^({OCTET}\\.){{3}}{OCTET}/(8|9|1[0-9]|2[0-9])$"


async def fetch(call: Call, ref: str, namespace: str | None = None) -> networks_pb2.Network:
    """The network by UUID or name (404 when missing or foreign)."""
    found: networks_pb2.Network = await call.rpc(
        call.api.networks.Get, networks_pb2.NetworkRef(ref=ref), namespace
    )
    return found


@table.route(
    "GET",
    "/networks",
    "List the networks visible to the caller",
    body=(Field("all", "bool", doc="also deleted networks"),),
)
async def list_networks(call: Call) -> Any:
    request = networks_pb2.ListNetworksRequest(include_deleted=call.body.get("all", False))
    found = await call.rpc(call.api.networks.List, request)
    return [views.network(n) for n in found.networks]


@table.route(
    "GET",
    "/networks/{ref}",
    "Get a network by UUID (deleted ones too) or name",
    body=(Field("namespace", "str", doc="look in this namespace (system only)", rules=NAMESPACE),),
)
async def get_network(call: Call) -> Any:
    return views.network(await fetch(call, call.param("ref"), call.body.get("namespace")))


@table.route(
    "POST",
    "/networks",
    "Create a network (an IPv4 netblock of at least /29)",
    body=(
        Field(
            "netblock",
            "str",
            True,
            "an IPv4 CIDR of at least /29, e.g. 10.0.0.0/24",
            rules={"pattern": NETBLOCK},
            enforced=False,
        ),
        Field("provide_dhcp", "bool", doc="serve DHCP (absent: false)"),
        Field("provide_nat", "bool", doc="NAT to outside (absent: false)"),
        Field("name", "str", True, rules={"pattern": NAME_PATTERN}),
        Field("namespace", "str", doc="create in this namespace (system only)", rules=NAMESPACE),
        Field("provide_dns", "bool", doc="answer NAME.NAMESPACE.ZONE in DNS (absent: false)"),
    ),
)
async def create_network(call: Call) -> Any:
    body = call.body
    request = networks_pb2.CreateNetworkRequest(
        name=body["name"],
        netblock=body["netblock"],
        provide_dhcp=body.get("provide_dhcp", False),
        provide_nat=body.get("provide_nat", False),
        provide_dns=body.get("provide_dns", False),
    )
    return views.network(await call.rpc(call.api.networks.Create, request, body.get("namespace")))


@table.route(
    "DELETE",
    "/networks/{ref}",
    "Delete a network (refused while instances use it); returns it, deleted",
    body=(Field("namespace", "str", doc="in this namespace (system only)", rules=NAMESPACE),),
    overrides=IN_USE,
)
async def delete_network(call: Call) -> Any:
    if call.param("ref") == FLOATING:
        raise HttpError(403, "you cannot delete the floating network")
    namespace = call.body.get("namespace")
    net = await fetch(call, call.param("ref"), namespace)
    if net.state == "deleted":
        raise HttpError(404, "network is deleted")
    request = networks_pb2.DeleteNetworkRequest(ref=net.uuid)
    return views.network(await call.rpc(call.api.networks.Delete, request, namespace))


@table.route(
    "DELETE",
    "/networks",
    "Delete every network of a namespace (403 naming those still in use)",
    body=(
        Field("confirm", "bool", True, "must be true", rules={"enum": [True]}),
        Field("namespace", "str", True, "the namespace to empty (system must name one)", NAMESPACE),
        Field("clean_wait", "bool", doc="first release interfaces of instances being deleted"),
    ),
)
async def delete_all_networks(call: Call) -> Any:
    namespace = await delete_all_namespace(call)
    found = await call.rpc(call.api.networks.List, networks_pb2.ListNetworksRequest(), namespace)
    targets = [n for n in found.networks if n.state != "deleted"]
    if namespace and any(n.namespace != namespace for n in targets):
        raise HttpError(401, "you cannot delete other namespaces")
    clean = call.body.get("clean_wait", False)
    deleted: list[str] = []
    unable: list[str] = []
    for net in targets:
        request = networks_pb2.DeleteNetworkRequest(ref=net.uuid, clean=clean)
        try:
            await call.rpc(call.api.networks.Delete, request, net.namespace)
        except grpc.aio.AioRpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            unable.append(net.uuid)
            continue
        deleted.append(net.uuid)
    if unable:
        # As Shaken Fist 0.7.2: the error is an object, not a string.
        raise HttpError(403, {"deleted": deleted, "unable": unable})
    return deleted


@table.route("GET", "/networks/{ref}/interfaces", "The live interfaces on a network")
async def network_interfaces(call: Call) -> Any:
    request = networks_pb2.NetworkRef(ref=call.param("ref"))
    found = await call.rpc(call.api.networks.ListInterfaces, request)
    return [views.interface(i) for i in found.interfaces]


@table.route(
    "GET", "/networks/{ref}/addresses", "Who holds which address of a network, in address order"
)
async def network_addresses(call: Call) -> Any:
    request = networks_pb2.NetworkRef(ref=call.param("ref"))
    found = await call.rpc(call.api.networks.ListAddresses, request)
    return [views.address(a) for a in found.addresses]


@table.route("GET", "/networks/{ref}/events", "A network's events, newest first", body=EVENT_FIELDS)
async def network_events(call: Call) -> Any:
    found = await call.rpc(call.api.networks.GetEvents, events_request(call))
    return [views.event(e) for e in found.events]


@table.route("GET", "/interfaces/{uuid}", "A network interface")
async def get_interface(call: Call) -> Any:
    ref = networks_pb2.InterfaceRef(uuid=call.uuid_param("uuid", "interface"))
    return views.interface(await call.rpc(call.api.interfaces.Get, ref))


@table.route(
    "POST",
    "/interfaces/{uuid}/float",
    "Give an interface a floating address (507 when the pool is exhausted)",
)
async def float_interface(call: Call) -> Any:
    ref = networks_pb2.InterfaceRef(uuid=call.uuid_param("uuid", "interface"))
    await call.rpc(call.api.interfaces.Float, ref)
    return None


@table.route("POST", "/interfaces/{uuid}/defloat", "Release an interface's floating address")
async def defloat_interface(call: Call) -> Any:
    ref = networks_pb2.InterfaceRef(uuid=call.uuid_param("uuid", "interface"))
    await call.rpc(call.api.interfaces.Defloat, ref)
    return None
