"""The gRPC stubs the gateway calls, all over one channel to the control plane (a
``FailoverChannel`` when the gateway is given several control-plane addresses)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from common.addresslist import AddressList
from gateway.failover import FailoverChannel
from protos import (
    agent_pb2_grpc,
    artifacts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    blobs_pb2_grpc,
    consoles_pb2_grpc,
    instances_pb2_grpc,
    metadata_pb2_grpc,
    networks_pb2_grpc,
    nodes_pb2_grpc,
    uploads_pb2_grpc,
)

MAX_MESSAGE = 64 * 1024 * 1024


@dataclass
class Backend:
    """One stub per gRPC service."""

    channel: grpc.aio.Channel
    instances: instances_pb2_grpc.InstanceServiceAsyncStub
    agent: agent_pb2_grpc.AgentServiceAsyncStub
    blobs: blobs_pb2_grpc.BlobServiceAsyncStub
    artifacts: artifacts_pb2_grpc.ArtifactServiceAsyncStub
    uploads: uploads_pb2_grpc.UploadServiceAsyncStub
    auth: auth_pb2_grpc.AuthServiceAsyncStub
    namespaces: auth_pb2_grpc.NamespaceServiceAsyncStub
    metadata: metadata_pb2_grpc.MetadataServiceAsyncStub
    consoles: consoles_pb2_grpc.ConsoleServiceAsyncStub
    networks: networks_pb2_grpc.NetworkServiceAsyncStub
    interfaces: networks_pb2_grpc.InterfaceServiceAsyncStub
    nodes: nodes_pb2_grpc.NodeAdminServiceAsyncStub
    health: health_pb2_grpc.HealthStub

    @classmethod
    def connect(cls, target: str, ca: bytes = b"") -> Backend:
        """Stubs over a new channel (call from inside the serving event loop): TLS checked
        against the CA certificate ca, or plaintext when ca is empty. target is one
        address, or several comma-separated: then the channel fails over between them
        (``gateway.failover``), the same TLS for each."""
        addresses = AddressList(target)
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        if not addresses.single:
            # An address that was down is tried again within seconds of coming back.
            options.append(("grpc.max_reconnect_backoff_ms", 5000))

        def dial(address: str) -> grpc.aio.Channel:
            if ca:
                creds = grpc.ssl_channel_credentials(root_certificates=ca)
                return grpc.aio.secure_channel(address, creds, options=options)
            return grpc.aio.insecure_channel(address, options=options)

        channel = dial(addresses.current) if addresses.single else FailoverChannel(addresses, dial)
        return cls(
            channel=channel,
            instances=instances_pb2_grpc.InstanceServiceStub(channel),
            agent=agent_pb2_grpc.AgentServiceStub(channel),
            blobs=blobs_pb2_grpc.BlobServiceStub(channel),
            artifacts=artifacts_pb2_grpc.ArtifactServiceStub(channel),
            uploads=uploads_pb2_grpc.UploadServiceStub(channel),
            auth=auth_pb2_grpc.AuthServiceStub(channel),
            namespaces=auth_pb2_grpc.NamespaceServiceStub(channel),
            metadata=metadata_pb2_grpc.MetadataServiceStub(channel),
            consoles=consoles_pb2_grpc.ConsoleServiceStub(channel),
            networks=networks_pb2_grpc.NetworkServiceStub(channel),
            health=health_pb2_grpc.HealthStub(channel),
            interfaces=networks_pb2_grpc.InterfaceServiceStub(channel),
            nodes=nodes_pb2_grpc.NodeAdminServiceStub(channel),
        )

    async def close(self) -> None:
        """Close the channel."""
        await self.channel.close()

    async def ready(self, timeout: float = 2.0) -> bool:
        """Whether the control plane answers its health check with SERVING in time."""
        try:
            reply = await self.health.Check(health_pb2.HealthCheckRequest(), timeout=timeout)
        except grpc.aio.AioRpcError:
            return False
        return bool(reply.status == health_pb2.HealthCheckResponse.SERVING)

    async def token_status(self, authorization: str, timeout: float = 5.0) -> str:
        """What the control plane says of a bearer token: "OK" or a gRPC status code name.

        A cheap authenticated call (the caller's visible namespaces, read from
        memory) with nothing but the token in its metadata. The value must already
        be printable ASCII (gRPC refuses anything else in metadata).
        """
        try:
            await self.namespaces.List(
                auth_pb2.ListNamespacesRequest(),
                metadata=(("authorization", authorization),),
                timeout=timeout,
            )
        except grpc.aio.AioRpcError as exc:
            return str(exc.code().name)
        return "OK"
