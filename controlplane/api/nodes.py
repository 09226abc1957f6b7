"""The NodeAdminService over gRPC: nodes as administrators see and steer them."""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.api.convert import dict_to_struct, event_to_pb
from controlplane.api.status import grpc_errors, namespace_of
from controlplane.model import Instance
from controlplane.services.nodes import NodeService, NodeView
from protos import instances_pb2, nodes_pb2, nodes_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def node_instance_to_pb(instance: Instance) -> nodes_pb2.NodeInstance:
    """An instance as a node lists it."""
    return nodes_pb2.NodeInstance(
        uuid=instance.uuid,
        name=instance.spec.name,
        namespace=instance.namespace,
        state=instance.state,
        power_state=instance.power_state,
    )


def node_to_pb(view: NodeView) -> nodes_pb2.NodeInfo:
    """A node for the wire."""
    node = view.node
    pb = nodes_pb2.NodeInfo(
        name=node.name,
        address=node.address,
        state=node.state,
        connected=view.connected,
        last_seen=view.last_heartbeat,
        first_seen=node.first_seen,
        state_updated_at=node.state_updated_at,
        hypervisor=node.hypervisor,
        agent_version=node.agent_version,
        qemu_version=node.qemu_version,
        libvirt_version=node.libvirt_version,
        console_host=node.console_host,
        cpus=node.cpus,
        memory_mb=node.memory_mb,
        disk_gb=node.disk_gb,
        committed_cpus=view.committed_cpus,
        committed_memory_mb=view.committed_memory_mb,
        committed_disk_gb=view.committed_disk_gb,
        instance_count=view.instance_count,
        instances=[node_instance_to_pb(i) for i in view.instances],
    )
    dict_to_struct(node.metadata, pb.metadata)
    pb.metadata.SetInParent()
    return pb


class NodeAdminServicer(nodes_pb2_grpc.NodeAdminServiceServicer):
    """gRPC face of the node use cases (the service refuses non-administrators)."""

    def __init__(self, service: NodeService) -> None:
        self.service = service

    @grpc_errors
    async def ListNodes(
        self, request: nodes_pb2.ListNodesRequest, context: Context
    ) -> nodes_pb2.ListNodesResponse:
        found = await self.service.list_all(namespace_of(context))
        return nodes_pb2.ListNodesResponse(nodes=[node_to_pb(v) for v in found])

    @grpc_errors
    async def GetNode(self, request: nodes_pb2.NodeRef, context: Context) -> nodes_pb2.NodeInfo:
        return node_to_pb(await self.service.get(namespace_of(context), request.name))

    @grpc_errors
    async def DisableNode(self, request: nodes_pb2.NodeRef, context: Context) -> nodes_pb2.NodeInfo:
        return node_to_pb(await self.service.disable(namespace_of(context), request.name))

    @grpc_errors
    async def EnableNode(self, request: nodes_pb2.NodeRef, context: Context) -> nodes_pb2.NodeInfo:
        return node_to_pb(await self.service.enable(namespace_of(context), request.name))

    @grpc_errors
    async def DrainNode(
        self, request: nodes_pb2.NodeRef, context: Context
    ) -> nodes_pb2.DrainReport:
        report = await self.service.drain(namespace_of(context), request.name)
        return nodes_pb2.DrainReport(
            node=node_to_pb(report.node),
            blocking=[node_instance_to_pb(i) for i in report.blocking],
            to_move=[node_instance_to_pb(i) for i in report.to_move],
        )

    @grpc_errors
    async def DeleteNode(self, request: nodes_pb2.NodeRef, context: Context) -> nodes_pb2.NodeInfo:
        return node_to_pb(await self.service.delete(namespace_of(context), request.name))

    @grpc_errors
    async def GetNodeEvents(
        self, request: nodes_pb2.GetNodeEventsRequest, context: Context
    ) -> instances_pb2.GetEventsResponse:
        events = await self.service.events(
            namespace_of(context), request.name, request.event_type, request.limit
        )
        return instances_pb2.GetEventsResponse(events=[event_to_pb(e) for e in events])
