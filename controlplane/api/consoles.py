"""The ConsoleService over gRPC: console log, screenshots, VDI helper and Attach."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import grpc
import structlog

from controlplane.api.status import abort_for, grpc_errors, namespace_of
from controlplane.errors import InvalidArgument, MiniCloudError
from controlplane.nodes import put_last
from controlplane.services.consoles import Attachment, ConsoleService
from controlplane.services.instances import InstanceService
from protos import consoles_pb2, consoles_pb2_grpc, instances_pb2

log = structlog.get_logger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]


class ConsoleServicer(consoles_pb2_grpc.ConsoleServiceServicer):
    """gRPC face of instance consoles."""

    def __init__(self, consoles: ConsoleService, instances: InstanceService) -> None:
        self.consoles = consoles
        self.instances = instances

    @grpc_errors
    async def GetConsoleData(
        self, request: consoles_pb2.ConsoleDataRequest, context: Context
    ) -> consoles_pb2.ConsoleData:
        instance = await self.instances.get(namespace_of(context), request.ref)
        data = await self.consoles.console_data(instance, request.length)
        return consoles_pb2.ConsoleData(data=data)

    @grpc_errors
    async def ClearConsoleData(
        self, request: instances_pb2.InstanceRef, context: Context
    ) -> consoles_pb2.ConsoleData:
        instance = await self.instances.get(namespace_of(context), request.ref)
        await self.consoles.clear(instance)
        return consoles_pb2.ConsoleData()

    @grpc_errors
    async def Screenshot(
        self, request: instances_pb2.InstanceRef, context: Context
    ) -> consoles_pb2.ScreenshotResponse:
        instance = await self.instances.get(namespace_of(context), request.ref)
        return consoles_pb2.ScreenshotResponse(blob_uuid=await self.consoles.screenshot(instance))

    @grpc_errors
    async def VdiConsoleHelper(
        self, request: instances_pb2.InstanceRef, context: Context
    ) -> consoles_pb2.VdiConsoleHelperResponse:
        instance = await self.instances.get(namespace_of(context), request.ref)
        helper = self.consoles.vdi_helper(instance)
        return consoles_pb2.VdiConsoleHelperResponse(
            vv=helper.vv,
            type=helper.type,
            host=helper.host,
            port=helper.port,
            tls_port=helper.tls_port,
        )

    async def Attach(
        self, request_iterator: AsyncIterator[consoles_pb2.ConsoleInput], context: Context
    ) -> AsyncIterator[consoles_pb2.ConsoleOutput]:
        try:
            first = await anext(aiter(request_iterator), None)
            if first is None or not first.ref:
                raise InvalidArgument("the first console message must name the instance (ref)")
            instance = await self.instances.get(namespace_of(context), first.ref)
            attachment = await self.consoles.attach(instance)
        except MiniCloudError as exc:
            await abort_for(context, exc)
            return
        pump = asyncio.create_task(self._pump_input(attachment, first.data, request_iterator))
        error = ""
        try:
            while True:
                relay = await attachment.sink.queue.get()
                if relay is None or relay.close:
                    error = relay.error if relay is not None else ""
                    break
                yield consoles_pb2.ConsoleOutput(data=relay.data)
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await pump
            self.consoles.detach(attachment)
        if error:
            code = (
                grpc.StatusCode.RESOURCE_EXHAUSTED
                if "too slow" in error
                else grpc.StatusCode.UNAVAILABLE
            )
            await context.abort(code, error)

    async def _pump_input(
        self,
        attachment: Attachment,
        first: bytes,
        messages: AsyncIterator[consoles_pb2.ConsoleInput],
    ) -> None:
        """Keystrokes from the caller to the node; the caller closing its side detaches."""
        try:
            await self.consoles.send_input(attachment, first)
            async for message in messages:
                await self.consoles.send_input(attachment, message.data)
        except (MiniCloudError, grpc.aio.AioRpcError) as exc:
            log.info("console input ended", session=attachment.session_id, error=str(exc))
        # End the session: the output loop sees the close and returns.
        self.consoles.detach(attachment)
        put_last(attachment.sink.queue, None)
