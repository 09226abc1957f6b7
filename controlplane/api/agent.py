"""The AgentService over gRPC: agent operations on instances."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.api.convert import dict_to_struct
from controlplane.api.status import abort_for, grpc_errors, namespace_of
from controlplane.errors import MiniCloudError
from controlplane.model import AgentOperation
from controlplane.services.agent import AgentService, OutputStream
from controlplane.services.instances import InstanceService
from protos import agent_pb2, agent_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


def operation_to_pb(op: AgentOperation) -> agent_pb2.AgentOperation:
    """An agent operation for the wire."""
    pb = agent_pb2.AgentOperation(
        uuid=op.uuid,
        namespace=op.namespace,
        instance_uuid=op.instance_uuid,
        state=op.state,
        error_message=op.error_message,
        version=op.version,
        created_at=op.created_at,
    )
    for command in op.commands:
        dict_to_struct(command, pb.commands.add())
    for key, result in op.results.items():
        dict_to_struct(result, pb.results[key])
    return pb


class AgentServicer(agent_pb2_grpc.AgentServiceServicer):
    """gRPC face of agent operations."""

    def __init__(self, agent: AgentService, instances: InstanceService) -> None:
        self.agent = agent
        self.instances = instances

    @grpc_errors
    async def Execute(
        self, request: agent_pb2.ExecuteRequest, context: Context
    ) -> agent_pb2.AgentOperation:
        instance = await self.instances.get(namespace_of(context), request.ref)
        op = await self.agent.execute(
            instance, request.command_line, dict(request.env), request.cwd, request.timeout
        )
        return operation_to_pb(op)

    async def ExecuteStream(
        self, request: agent_pb2.ExecuteRequest, context: Context
    ) -> AsyncIterator[agent_pb2.ExecuteOutput]:
        namespace = namespace_of(context)
        stream = OutputStream()
        try:
            instance = await self.instances.get(namespace, request.ref)
            op = await self.agent.execute(
                instance,
                request.command_line,
                dict(request.env),
                request.cwd,
                request.timeout,
                stream=stream,
            )
        except MiniCloudError as exc:
            await abort_for(context, exc)
            return
        try:
            yield agent_pb2.ExecuteOutput(operation=operation_to_pb(op))
            while (chunk := await stream.queue.get()) is not None:
                name, data = chunk
                if name == "stderr":
                    yield agent_pb2.ExecuteOutput(stderr=data)
                else:
                    yield agent_pb2.ExecuteOutput(stdout=data)
            final = await self.agent.get(namespace, op.uuid)
            yield agent_pb2.ExecuteOutput(operation=operation_to_pb(final))
        finally:
            self.agent.unsubscribe(op.uuid)

    @grpc_errors
    async def Put(
        self, request: agent_pb2.PutRequest, context: Context
    ) -> agent_pb2.AgentOperation:
        instance = await self.instances.get(namespace_of(context), request.ref)
        op = await self.agent.put(instance, request.blob_uuid, request.path, request.mode)
        return operation_to_pb(op)

    @grpc_errors
    async def Get(
        self, request: agent_pb2.GetRequest, context: Context
    ) -> agent_pb2.AgentOperation:
        instance = await self.instances.get(namespace_of(context), request.ref)
        return operation_to_pb(await self.agent.get_file(instance, request.path))

    @grpc_errors
    async def GetAgentOperation(
        self, request: agent_pb2.OperationRef, context: Context
    ) -> agent_pb2.AgentOperation:
        return operation_to_pb(await self.agent.get(namespace_of(context), request.uuid))

    @grpc_errors
    async def ListAgentOperations(
        self, request: agent_pb2.ListAgentOperationsRequest, context: Context
    ) -> agent_pb2.ListAgentOperationsResponse:
        instance = await self.instances.get(namespace_of(context), request.ref)
        ops = await self.agent.list_for(instance, request.all)
        return agent_pb2.ListAgentOperationsResponse(operations=[operation_to_pb(o) for o in ops])

    @grpc_errors
    async def DeleteAgentOperation(
        self, request: agent_pb2.OperationRef, context: Context
    ) -> agent_pb2.AgentOperation:
        return operation_to_pb(await self.agent.delete(namespace_of(context), request.uuid))
