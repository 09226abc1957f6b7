"""Component fixtures: a real control plane on 127.0.0.1 and node agents with fakes."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from controlplane.app import ControlPlane, start
from controlplane.settings import Settings
from nodeagent.app import NodeAgent, build
from nodeagent.blobclient import GrpcBlobs
from nodeagent.credentials import Credentials
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.metrics import NodeMetrics
from nodeagent.network.fake import FakeNetworkDriver
from nodeagent.settings import Settings as NodeSettings
from nodeagent.stream import ControlStream
from protos import auth_pb2, auth_pb2_grpc, instances_pb2, instances_pb2_grpc

SYSTEM_KEY = "component-test-system-key"


@dataclass
class FakeNode:
    """A node agent running in the test's event loop with a fake hypervisor."""

    name: str
    hypervisor: FakeHypervisor
    disks: FakeDiskBuilder
    agent: NodeAgent
    task: asyncio.Task[None]
    stopping: asyncio.Event
    settings: NodeSettings
    network: FakeNetworkDriver

    @property
    def stream(self) -> ControlStream:
        return self.agent.stream

    def agent_socket(self, uuid: str) -> Path:
        """Where an instance's sf-agent channel socket is (a guest agent may serve it)."""
        return self.agent.watch.socket_path(uuid)

    async def stop(self) -> None:
        """Stop the agent (its fake guests stay as they are)."""
        self.stopping.set()
        await self.task
        shutil.rmtree(self.settings.data_dir, ignore_errors=True)

    async def close(self) -> None:
        """Kill the agent and its fake guests (their console servers too)."""
        await self.stop()
        await self.hypervisor.close()


async def start_fake_node(
    target: str,
    name: str = "node1",
    cpus: int = 4,
    memory_mb: int = 8192,
    hypervisor: FakeHypervisor | None = None,
    network: FakeNetworkDriver | None = None,
    address: str = "127.0.0.1",
    usage_interval: float = 0.0,
) -> FakeNode:
    """Start a node agent with fakes and wait until it has registered."""
    hypervisor = hypervisor or FakeHypervisor()
    network = network or FakeNetworkDriver()
    disks = FakeDiskBuilder()
    # Short: guest agent sockets live under it (unix socket paths are limited to 107 bytes).
    data_dir = Path(tempfile.mkdtemp(prefix="mcn-", dir="/tmp"))
    settings = NodeSettings(
        control_plane=target,
        name=name,
        data_dir=data_dir,
        hypervisor="fake",
        cpus=cpus,
        memory_mb=memory_mb,
        backoff_base=0.05,
        backoff_cap=0.2,
        address=address,
        usage_interval=usage_interval,
        metrics_listen="127.0.0.1:0",
    )
    metrics = NodeMetrics()
    blobs = GrpcBlobs(target, Credentials("system", SYSTEM_KEY), metrics)
    agent = build(settings, hypervisor, disks, blobs, network, metrics=metrics)
    stopping = asyncio.Event()
    task = asyncio.create_task(agent.run(stopping), name=f"node agent {name}")
    await asyncio.wait_for(agent.stream.connected.wait(), 10)
    return FakeNode(name, hypervisor, disks, agent, task, stopping, settings, network)


def plane_settings(data_dir: Path, port: int = 0) -> Settings:
    """Settings for a test control plane with quick timeouts."""
    return Settings(
        listen=f"127.0.0.1:{port}",
        data_dir=data_dir,
        name="cp-test",
        heartbeat_interval=0.5,
        node_timeout=5.0,
        command_timeout=10.0,
        system_key=SYSTEM_KEY,
        metrics_listen="127.0.0.1:0",
        metrics_instance_cache=0.0,
    )


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane with a RocksDB store in a temporary folder."""
    cp = await start(plane_settings(tmp_path / "cp"))
    yield cp
    await cp.stop(0)


@pytest.fixture
async def node(plane: ControlPlane, tmp_path: Path) -> AsyncIterator[FakeNode]:
    """One fake node agent connected to the plane."""
    fake = await start_fake_node(f"127.0.0.1:{plane.port}")
    yield fake
    await fake.close()


async def bearer(
    channel: grpc.aio.Channel, namespace: str = "system", key: str = SYSTEM_KEY
) -> Any:
    """Call metadata with a token for the namespace."""
    # wait_for_ready: in one process, channels to one target share a connection, which
    # may still be backing off from a control plane that was just restarted.
    reply = await auth_pb2_grpc.AuthServiceStub(channel).Token(
        auth_pb2.TokenRequest(namespace=namespace, key=key), wait_for_ready=True
    )
    return (("authorization", f"Bearer {reply.access_token}"),)


async def make_api(
    channel: grpc.aio.Channel, namespace: str = "system", key: str = SYSTEM_KEY
) -> Api:
    """An Api authenticated as the namespace (which must exist and hold key)."""
    return Api(channel, await bearer(channel, namespace, key))


async def namespace_api(channel: grpc.aio.Channel, namespace: str) -> Api:
    """An Api for a new namespace (made by system with a key)."""
    namespaces = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
    key = f"{namespace}-key"
    await namespaces.Create(auth_pb2.CreateNamespaceRequest(name=namespace, key_name="k", key=key))
    return await make_api(channel, namespace, key)


class Authed:
    """A stub that sends a token with every call."""

    def __init__(self, stub: Any, metadata: Any) -> None:
        self.stub = stub
        self.metadata = metadata

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.stub, name)

        def call(request: Any, **kwargs: Any) -> Any:
            # Extra metadata (x-namespace, say) goes beside the token.
            kwargs["metadata"] = (*self.metadata, *kwargs.get("metadata", ()))
            return method(request, **kwargs)

        return call


async def authed(stub_class: Any, channel: grpc.aio.Channel) -> Any:
    """A stub of stub_class on channel, authenticated as the system namespace."""
    return Authed(stub_class(channel), await bearer(channel))


class Api(Authed):
    """An InstanceService stub that sends a token with every call."""

    def __init__(self, channel: grpc.aio.Channel, metadata: Any) -> None:
        super().__init__(instances_pb2_grpc.InstanceServiceStub(channel), metadata)

    async def wait_for(
        self, ref: str, predicate: Callable[[instances_pb2.Instance], bool], timeout: float = 10
    ) -> instances_pb2.Instance:
        """Poll Get until predicate holds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            inst: instances_pb2.Instance = await self.Get(instances_pb2.InstanceRef(ref=ref))
            if predicate(inst):
                return inst
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"timed out; last seen: {inst}")
            await asyncio.sleep(0.02)


@pytest.fixture
async def api(plane: ControlPlane) -> AsyncIterator[Api]:
    """A client of the plane in the system namespace."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        yield await make_api(channel)


def create_request(name: str = "vm1", **overrides: Any) -> instances_pb2.CreateInstanceRequest:
    """A valid create request for a small instance, with fields overridden."""
    spec: dict[str, Any] = {
        "name": name,
        "cpus": 1,
        "memory": 256,
        "disks": [{"size_gb": 1, "base": "debian:11"}],
    }
    spec.update(overrides)
    return instances_pb2.CreateInstanceRequest(spec=spec)  # type: ignore[arg-type]
