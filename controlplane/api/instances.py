"""The public InstanceService over gRPC: translates messages, calls the service."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import grpc

from controlplane.api.convert import InstanceMessages, event_to_pb, instance_to_pb, spec_from_pb
from controlplane.api.status import abort_for, authenticated_as, grpc_errors, namespace_of
from controlplane.errors import FailedPrecondition, MiniCloudError
from controlplane.model import Instance
from controlplane.paging import decode_token, encode_token, page_size
from controlplane.services.instances import InstanceService
from controlplane.services.moves import MoveService
from controlplane.services.namespaces import require_system
from controlplane.services.snapshots import DiskSnapshot, SnapshotService, SnapshotVersion
from protos import instances_pb2, instances_pb2_grpc

Context = grpc.aio.ServicerContext[Any, Any]


class InstanceServicer(instances_pb2_grpc.InstanceServiceServicer):
    """gRPC face of the instance use cases."""

    def __init__(
        self,
        service: InstanceService,
        moves: MoveService | None = None,
        snapshots: SnapshotService | None = None,
    ) -> None:
        self.service = service
        self.moves = moves
        self.snapshots = snapshots
        self.messages = InstanceMessages()

    @grpc_errors
    async def Create(
        self, request: instances_pb2.CreateInstanceRequest, context: Context
    ) -> instances_pb2.Instance:
        spec = spec_from_pb(request.spec)
        namespace = namespace_of(context)
        if request.placed_on:
            # The token's namespace: system acting in another namespace may still place.
            require_system(authenticated_as(), "choose the node of an instance (placed_on)")
        created = await self.service.create(
            namespace, spec, request.client_request_id, request.placed_on
        )
        return instance_to_pb(created)

    @grpc_errors
    async def Get(
        self, request: instances_pb2.InstanceRef, context: Context
    ) -> instances_pb2.Instance:
        return instance_to_pb(await self.service.get(namespace_of(context), request.ref))

    @grpc_errors
    async def List(
        self, request: instances_pb2.ListInstancesRequest, context: Context
    ) -> instances_pb2.ListInstancesResponse:
        if not request.page_size and not request.page_token:  # unpaged, as before paging
            found = await self.service.list_all(namespace_of(context), request.include_deleted)
            reply = instances_pb2.ListInstancesResponse()
            reply.instances.extend(self.messages.message(i) for i in found)
            return reply
        page, _ = await self._page(request, context, decode_token(request.page_token))
        return page

    async def ListStream(
        self, request: instances_pb2.ListInstancesRequest, context: Context
    ) -> AsyncIterator[instances_pb2.ListInstancesResponse]:
        try:
            after = decode_token(request.page_token)
            while True:
                page, after = await self._page(request, context, after)
                yield page
                if not after:
                    return
        except MiniCloudError as exc:
            await abort_for(context, exc)

    async def _page(
        self, request: instances_pb2.ListInstancesRequest, context: Context, after: str
    ) -> tuple[instances_pb2.ListInstancesResponse, str]:
        """One page from after, and the UUID the next one resumes after ("" at the end)."""
        found, last = await self.service.list_page(
            namespace_of(context), request.include_deleted, page_size(request.page_size), after
        )
        page = instances_pb2.ListInstancesResponse(next_page_token=encode_token(last))
        page.instances.extend(self.messages.message(i) for i in found)
        return page, last

    @grpc_errors
    async def Delete(
        self, request: instances_pb2.InstanceRef, context: Context
    ) -> instances_pb2.Instance:
        return instance_to_pb(await self.service.delete(namespace_of(context), request.ref))

    async def _power(self, request: instances_pb2.InstanceRef, context: Context, op: str) -> Any:
        return instance_to_pb(await self.service.power(namespace_of(context), request.ref, op))

    @grpc_errors
    async def SoftReboot(self, request: instances_pb2.InstanceRef, context: Context) -> Any:
        return await self._power(request, context, "soft-reboot")

    @grpc_errors
    async def HardReboot(self, request: instances_pb2.InstanceRef, context: Context) -> Any:
        return await self._power(request, context, "hard-reboot")

    @grpc_errors
    async def PowerOn(self, request: instances_pb2.InstanceRef, context: Context) -> Any:
        return await self._power(request, context, "on")

    @grpc_errors
    async def PowerOff(self, request: instances_pb2.InstanceRef, context: Context) -> Any:
        return await self._power(request, context, "off")

    @grpc_errors
    async def Pause(self, request: instances_pb2.InstanceRef, context: Context) -> Any:
        return await self._power(request, context, "pause")

    @grpc_errors
    async def Unpause(self, request: instances_pb2.InstanceRef, context: Context) -> Any:
        return await self._power(request, context, "unpause")

    @grpc_errors
    async def Move(
        self, request: instances_pb2.MoveInstanceRequest, context: Context
    ) -> instances_pb2.Instance:
        namespace = namespace_of(context)
        require_system(namespace, "move instances")
        instance = await self.service.get(namespace, request.ref)
        if self.moves is None:
            raise FailedPrecondition("this control plane cannot move instances")
        return instance_to_pb(await self.moves.move(instance.uuid, request.node))

    @grpc_errors
    async def Snapshot(
        self, request: instances_pb2.SnapshotInstanceRequest, context: Context
    ) -> instances_pb2.SnapshotInstanceResponse:
        if self.snapshots is None:
            raise FailedPrecondition("this control plane cannot snapshot instances")
        taken = await self.snapshots.snapshot(
            namespace_of(context), request.ref, request.device, request.thin, request.label_name
        )
        return instances_pb2.SnapshotInstanceResponse(snapshots=[_snapshot_pb(t) for t in taken])

    @grpc_errors
    async def ListSnapshots(
        self, request: instances_pb2.InstanceRef, context: Context
    ) -> instances_pb2.ListSnapshotsResponse:
        if self.snapshots is None:
            raise FailedPrecondition("this control plane cannot snapshot instances")
        found = await self.snapshots.versions(namespace_of(context), request.ref)
        return instances_pb2.ListSnapshotsResponse(snapshots=[_version_pb(v) for v in found])

    @grpc_errors
    async def GetEvents(
        self, request: instances_pb2.GetEventsRequest, context: Context
    ) -> instances_pb2.GetEventsResponse:
        events = await self.service.events(
            namespace_of(context), request.ref, request.event_type, request.limit
        )
        return instances_pb2.GetEventsResponse(events=[event_to_pb(e) for e in events])

    async def Watch(
        self, request: instances_pb2.WatchRequest, context: Context
    ) -> AsyncIterator[instances_pb2.WatchUpdate]:
        sub = await _subscribe(self.service, namespace_of(context), request.ref, context)
        try:
            if request.ref:
                current = await self.service.get(namespace_of(context), request.ref)
                yield instances_pb2.WatchUpdate(instance=instance_to_pb(current))
            while not sub.overflowed:
                update = await sub.queue.get()
                if update is None:
                    continue  # woken to end: the subscription was lost
                if isinstance(update, Instance):
                    yield instances_pb2.WatchUpdate(instance=instance_to_pb(update))
                else:
                    yield instances_pb2.WatchUpdate(event=event_to_pb(update))
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED, "watcher fell too far behind; watch again"
            )
        finally:
            self.service.hub.unsubscribe(sub)


async def _subscribe(service: InstanceService, namespace: str, ref: str, context: Context) -> Any:
    try:
        return await service.watch(namespace, ref)
    except MiniCloudError as exc:
        await abort_for(context, exc)


def _snapshot_pb(taken: DiskSnapshot) -> instances_pb2.DiskSnapshot:
    return instances_pb2.DiskSnapshot(
        device=taken.device,
        artifact_uuid=taken.artifact.uuid,
        artifact_index=taken.index,
        blob_uuid=taken.blob_uuid,
        source_url=taken.source_url,
        consistency=taken.consistency,
        note=taken.note,
        frozen=list(taken.frozen),
        thin=taken.thin,
        base_blob=taken.base_blob,
        size=taken.size,
        label_uuid=taken.label.uuid if taken.label is not None else "",
    )


def _version_pb(version: SnapshotVersion) -> instances_pb2.SnapshotVersion:
    return instances_pb2.SnapshotVersion(
        artifact_uuid=version.artifact.uuid,
        source_url=version.artifact.source_url,
        device=version.device,
        index=version.index,
        blob_uuid=version.blob_uuid,
        created=version.created,
        size=version.size,
        state=version.state,
    )
