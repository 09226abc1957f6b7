"""TLS on both listeners: node agents are who their certificates say, and revocation cuts them off.

A real control plane with the cluster's certificates (made by the CA folder
``minicloud-ca`` keeps) serves the public API over TLS and the node stream on
its own listener, which requires a node certificate.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from client import cacli
from client.api import Client
from client.cadir import CaDir
from common import pki
from common.nodewire.convert import register_to_pb
from common.nodewire.messages import Register
from common.tlsfiles import Material, TLSFiles
from controlplane.app import ControlPlane, start
from nodeagent.blobclient import GrpcBlobs
from nodeagent.credentials import Credentials
from protos import node_pb2, node_pb2_grpc, nodes_pb2, nodes_pb2_grpc
from tests.component.conftest import (
    SYSTEM_KEY,
    FakeNode,
    bearer,
    plane_settings,
    start_fake_node,
)

NOW = datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass
class Tls:
    """A TLS control plane and the CA folder that issued its certificates."""

    plane: ControlPlane
    ca: CaDir

    @property
    def public(self) -> str:
        return f"127.0.0.1:{self.plane.port}"

    @property
    def nodes(self) -> str:
        return f"127.0.0.1:{self.plane.node_port}"

    def node_material(self, name: str) -> Material:
        """The certificate, key and CA a node agent named name holds (issued once)."""
        if not (self.ca.issued / f"{name}.crt").exists():
            self.ca.issue("node", name, NOW)
        return self.files(name).read()

    def files(self, name: str) -> TLSFiles:
        issued = self.ca.issued
        return TLSFiles(
            str(issued / f"{name}.crt"), str(issued / f"{name}.key"), str(self.ca.path / "ca.crt")
        )

    def secure(self, target: str, client: Material | None = None) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(
            root_certificates=(self.ca.path / "ca.crt").read_bytes(),
            private_key=client.key if client else None,
            certificate_chain=client.cert if client else None,
        )
        return grpc.aio.secure_channel(target, creds)

    def client(self) -> Client:
        return Client(self.public, "system", SYSTEM_KEY, 10, ca_file=str(self.ca.path / "ca.crt"))


@pytest.fixture
async def tls(tmp_path: Path) -> AsyncIterator[Tls]:
    """A control plane serving TLS with a server certificate for 127.0.0.1."""
    ca = CaDir(tmp_path / "ca")
    ca.init(NOW)
    ca.issue("server", "controlplane", NOW, sans=("127.0.0.1",))
    issued = ca.issued
    settings = dataclasses.replace(
        plane_settings(tmp_path / "cp"),
        tls=TLSFiles(
            str(issued / "controlplane.crt"),
            str(issued / "controlplane.key"),
            str(ca.path / "ca.crt"),
        ),
        node_listen="127.0.0.1:0",
        revocation_interval=0.2,
    )
    plane = await start(settings)
    yield Tls(plane, ca)
    await plane.stop(0)


@pytest.fixture
async def node1(tls: Tls) -> AsyncIterator[FakeNode]:
    fake = await start_fake_node(tls.nodes, "node1", tls=tls.node_material("node1"))
    yield fake
    await fake.close()


async def test_a_node_with_its_certificate_connects_and_serves_instances(
    tls: Tls, node1: FakeNode
) -> None:
    """The node's certificate is its credential: it registers, and creates over TLS reach it."""
    assert tls.plane.nodes.connected("node1")
    assert tls.plane.parts.cluster_id == tls.ca.cluster_id()  # the CA names the cluster

    def create() -> dict[str, object]:  # the client is synchronous: off the plane's loop
        with tls.client() as api:
            spec = {"name": "secure", "cpus": 1, "memory": 256, "disks": [{"size_gb": 1}]}
            inst = api.create(spec)
            return api.wait(inst["uuid"], lambda i: i["state"] in ("created", "error"), 10)

    done = await asyncio.to_thread(create)
    assert (done["state"], done["node"]) == ("created", "node1")


async def test_the_public_listener_does_not_serve_the_node_stream(tls: Tls) -> None:
    """Even the system namespace's token opens no node stream on the public listener."""
    async with tls.secure(tls.public) as channel:
        metadata = await bearer(channel)
        call = node_pb2_grpc.NodeServiceStub(channel).Connect(iter(()), metadata=metadata)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


async def test_plaintext_and_certificateless_callers_are_refused_at_the_handshake(
    tls: Tls,
) -> None:
    """No plaintext on either listener, and the node listener wants a client certificate."""
    for target in (tls.public, tls.nodes):
        async with grpc.aio.insecure_channel(target) as channel:
            assert not await ready(channel), target
    async with tls.secure(tls.nodes) as channel:
        assert not await ready(channel)
    async with tls.secure(tls.nodes, tls.node_material("node3")) as channel:
        assert await ready(channel)


async def ready(channel: grpc.aio.Channel) -> bool:
    """Whether the channel connects (its TLS handshake succeeds) within two seconds."""
    try:
        await asyncio.wait_for(channel.channel_ready(), 2)
    except TimeoutError:
        return False
    return True


async def test_a_node_may_only_speak_as_the_node_its_certificate_names(tls: Tls) -> None:
    """node2's certificate registering as node1 is PERMISSION_DENIED and registers nothing."""
    material = tls.node_material("node2")
    register = node_pb2.NodeMessage(
        register=register_to_pb(
            Register(name="node1", address="127.0.0.1", cpus=2, memory_mb=1024, hypervisor="fake")
        )
    )
    async with tls.secure(tls.nodes, material) as channel:
        call = node_pb2_grpc.NodeServiceStub(channel).Connect(iter([register]), timeout=5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await call.read()
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert "node2" in (caught.value.details() or "")
    assert not tls.plane.nodes.connected("node1")


async def test_a_server_certificate_is_not_a_node_certificate(tls: Tls) -> None:
    """A certificate of the right CA for serving (not for clients) fails the handshake."""
    async with tls.secure(tls.nodes, tls.files("controlplane").read()) as channel:
        assert not await ready(channel)


async def test_a_node_moves_blobs_with_its_certificate(tls: Tls, node1: FakeNode) -> None:
    """BlobService is served on the node listener too, to the node's certificate."""
    blobs = GrpcBlobs(tls.nodes, Credentials("system", "", tls=tls.node_material("node1")))

    async def chunks() -> AsyncIterator[bytes]:
        yield b"disk bytes " * 100

    uuid = await blobs.upload(chunks())
    got = b"".join([chunk async for chunk in blobs.download(uuid)])
    assert got == b"disk bytes " * 100
    await blobs.channel.close()


async def test_revoking_a_node_certificate_closes_its_stream_and_refuses_it_again(
    tls: Tls, node1: FakeNode
) -> None:
    """After RevokeCertificate the node is cut off at once and its redials are refused."""
    serial = str(pki.info((tls.ca.issued / "node1.crt").read_bytes()).serial)
    async with tls.secure(tls.public) as channel:
        admin = nodes_pb2_grpc.NodeAdminServiceStub(channel)
        metadata = await bearer(channel)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await admin.RevokeCertificate(
                nodes_pb2.RevokeCertificateRequest(serial="12ab"), metadata=metadata
            )
        assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        revoked = await admin.RevokeCertificate(
            nodes_pb2.RevokeCertificateRequest(serial=serial, name="node1", reason="stolen"),
            metadata=metadata,
        )
        assert (revoked.serial, revoked.reason) == (serial, "stolen")
        listed = await admin.ListRevocations(nodes_pb2.ListRevocationsRequest(), metadata=metadata)
        assert [r.serial for r in listed.revocations] == [serial]
    deadline = asyncio.get_running_loop().time() + 5
    while tls.plane.nodes.connected("node1"):
        assert asyncio.get_running_loop().time() < deadline, "the revoked stream stayed open"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the agent redials with backoff (at most 0.2 s here)
    assert not tls.plane.nodes.connected("node1")
    assert not node1.stream.connected.is_set()


async def test_a_stream_opened_before_its_revocation_is_closed_by_the_periodic_check(
    tls: Tls, node1: FakeNode
) -> None:
    """A revocation written by another control plane (straight to the store) is seen too."""
    from controlplane.store.revocations import Revocation, Revocations

    serial = pki.info((tls.ca.issued / "node1.crt").read_bytes()).serial
    await Revocations(tls.plane.store).add(Revocation(serial, "node1", "elsewhere", 0.0))
    deadline = asyncio.get_running_loop().time() + 5
    while tls.plane.nodes.connected("node1"):
        assert asyncio.get_running_loop().time() < deadline, "the revoked stream stayed open"
        await asyncio.sleep(0.05)


async def test_minicloud_ca_revoke_tells_the_control_plane(
    tls: Tls, node1: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """`minicloud-ca revoke NODE --api ...` records it in the folder and the store: cut off."""
    argv = ["--dir", str(tls.ca.path), "revoke", "node1", "--reason", "lost"]
    code = await asyncio.to_thread(cacli.main, [*argv, "--api", tls.public, "--key", SYSTEM_KEY])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "control plane" in out and "told" in out
    deadline = asyncio.get_running_loop().time() + 5
    while tls.plane.nodes.connected("node1"):
        assert asyncio.get_running_loop().time() < deadline, "the revoked stream stayed open"
        await asyncio.sleep(0.05)
    revoked = await tls.plane.certificates.revocations.list_all()
    assert [(r.name, r.reason) for r in revoked] == [("node1", "lost")]
    bad_key = ["--dir", str(tls.ca.path), "revoke", "node1", "--api", tls.public, "--key", "x"]
    assert await asyncio.to_thread(cacli.main, bad_key) == 1
    assert "UNAUTHENTICATED" in capsys.readouterr().err
