"""The public NetworkService and InterfaceService over gRPC."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.convert import (
    dict_to_struct,
    event_to_pb,
    interface_to_pb,
    struct_to_dict,
)
from controlplane.api.status import grpc_errors, namespace_of
from controlplane.model import Network, NetworkSpec
from controlplane.services.interfaces import InterfaceService
from controlplane.services.netsync import NetworkSync
from controlplane.services.networks import NetworkService
from protos import common_pb2, instances_pb2, networks_pb2, networks_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def network_to_pb(net: Network) -> networks_pb2.Network:
    """A network for the wire."""
    pb = networks_pb2.Network(
        uuid=net.uuid,
        name=net.name,
        namespace=net.namespace,
        netblock=net.netblock,
        provide_dhcp=net.provide_dhcp,
        provide_nat=net.provide_nat,
        provide_dns=net.provide_dns,
        vxlan_id=net.vxlan_id,
        state=net.state,
        error_message=net.error_message,
        floating_gateway=net.egress_address,
        version=net.version,
        created_at=net.created_at,
        state_updated_at=net.state_updated_at,
        services_node=net.services_node,
    )
    dict_to_struct(net.metadata, pb.metadata)
    return pb


def _interfaces(found: list[Any]) -> networks_pb2.ListInterfacesResponse:
    return networks_pb2.ListInterfacesResponse(interfaces=[interface_to_pb(i) for i in found])


class NetworkServicer(networks_pb2_grpc.NetworkServiceServicer):
    """gRPC face of the network use cases."""

    def __init__(self, service: NetworkService, netsync: NetworkSync) -> None:
        self.service = service
        self.netsync = netsync

    @grpc_errors
    async def Create(
        self, request: networks_pb2.CreateNetworkRequest, context: Context
    ) -> networks_pb2.Network:
        net = await self.service.create(
            namespace_of(context),
            request.name,
            request.netblock,
            request.provide_dhcp,
            request.provide_nat,
            struct_to_dict(request.metadata),
            provide_dns=request.provide_dns,
        )
        return network_to_pb(net)

    @grpc_errors
    async def Get(self, request: networks_pb2.NetworkRef, context: Context) -> networks_pb2.Network:
        return network_to_pb(await self.service.get(namespace_of(context), request.ref))

    @grpc_errors
    async def List(
        self, request: networks_pb2.ListNetworksRequest, context: Context
    ) -> networks_pb2.ListNetworksResponse:
        found = await self.service.list_all(namespace_of(context), request.include_deleted)
        return networks_pb2.ListNetworksResponse(networks=[network_to_pb(n) for n in found])

    @grpc_errors
    async def Delete(
        self, request: networks_pb2.DeleteNetworkRequest, context: Context
    ) -> networks_pb2.Network:
        net, changed = await self.service.delete(namespace_of(context), request.ref, request.clean)
        if changed:
            await self.netsync.sync([net.uuid])
        return network_to_pb(net)

    @grpc_errors
    async def ListAddresses(
        self, request: networks_pb2.NetworkRef, context: Context
    ) -> networks_pb2.ListAddressesResponse:
        found = await self.service.addresses(namespace_of(context), request.ref)
        return networks_pb2.ListAddressesResponse(
            addresses=[
                networks_pb2.Address(
                    address=r.address,
                    type=r.type,
                    user_type=r.user_type,
                    user_uuid=r.user_uuid,
                    when=r.when,
                    comment=r.comment,
                )
                for r in found
            ]
        )

    @grpc_errors
    async def ListInterfaces(
        self, request: networks_pb2.NetworkRef, context: Context
    ) -> networks_pb2.ListInterfacesResponse:
        return _interfaces(await self.service.interfaces(namespace_of(context), request.ref))

    @grpc_errors
    async def GetEvents(
        self, request: instances_pb2.GetEventsRequest, context: Context
    ) -> instances_pb2.GetEventsResponse:
        events = await self.service.events(
            namespace_of(context), request.ref, request.event_type, request.limit
        )
        return instances_pb2.GetEventsResponse(events=[event_to_pb(e) for e in events])


def _spec(pb: common_pb2.NetworkSpec) -> NetworkSpec:
    return NetworkSpec(pb.network_uuid, pb.macaddress, pb.address, pb.model, pb.float)


class InterfaceServicer(networks_pb2_grpc.InterfaceServiceServicer):
    """gRPC face of the interface use cases."""

    def __init__(self, service: InterfaceService) -> None:
        self.service = service

    @grpc_errors
    async def Get(
        self, request: networks_pb2.InterfaceRef, context: Context
    ) -> common_pb2.NetworkInterface:
        return interface_to_pb(await self.service.get(namespace_of(context), request.uuid))

    @grpc_errors
    async def ListForInstance(
        self, request: instances_pb2.InstanceRef, context: Context
    ) -> networks_pb2.ListInterfacesResponse:
        return _interfaces(await self.service.list_for_instance(namespace_of(context), request.ref))

    @grpc_errors
    async def Attach(
        self, request: networks_pb2.AttachInterfaceRequest, context: Context
    ) -> common_pb2.NetworkInterface:
        iface = await self.service.attach(
            namespace_of(context), request.instance, _spec(request.network)
        )
        return interface_to_pb(iface)

    @grpc_errors
    async def Float(
        self, request: networks_pb2.InterfaceRef, context: Context
    ) -> common_pb2.NetworkInterface:
        return interface_to_pb(await self.service.float(namespace_of(context), request.uuid))

    @grpc_errors
    async def Defloat(
        self, request: networks_pb2.InterfaceRef, context: Context
    ) -> common_pb2.NetworkInterface:
        return interface_to_pb(await self.service.defloat(namespace_of(context), request.uuid))
