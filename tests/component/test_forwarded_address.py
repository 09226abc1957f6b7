"""With TLS, a caller's address passed on counts only when the gateway's certificate vouches for it.

A real TLS control plane slows bad logins per caller's address. An address
forwarded without the gateway certificate's proof (even from loopback, which
plaintext mode trusts) is ignored: the failures count against the peer itself.
"""

from __future__ import annotations

import dataclasses
import datetime
import ssl
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from client.cadir import CaDir
from common import forwarded, pki
from common.tlsfiles import TLSFiles
from controlplane.app import ControlPlane, start
from gateway.app import serve
from gateway.settings import GatewaySettings
from protos import auth_pb2, auth_pb2_grpc
from tests.component.conftest import SYSTEM_KEY, plane_settings

NOW = datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass
class Plane:
    """A TLS control plane, its CA's certificate and the gateway's certificate."""

    cp: ControlPlane
    ca: bytes
    gateway: pki.KeyPair
    folder: CaDir

    def channel(self) -> grpc.aio.Channel:
        creds = grpc.ssl_channel_credentials(root_certificates=self.ca)
        return grpc.aio.secure_channel(f"127.0.0.1:{self.cp.port}", creds)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[Plane]:
    """Two free failures, then a backoff of a few seconds."""
    ca = CaDir(tmp_path / "ca")
    ca.init(NOW)
    ca.issue("server", "controlplane", NOW, sans=("127.0.0.1",))
    ca.issue("gateway", "rest-gateway", NOW)
    ca.issue("server", "gateway", NOW, sans=("127.0.0.1",))
    issued = ca.issued
    settings = dataclasses.replace(
        plane_settings(tmp_path / "cp"),
        tls=TLSFiles(
            str(issued / "controlplane.crt"),
            str(issued / "controlplane.key"),
            str(ca.path / "ca.crt"),
        ),
        node_listen="127.0.0.1:0",
        login_free_failures=2,
        login_backoff=5.0,
        login_backoff_max=5.0,
    )
    cp = await start(settings)
    gateway = pki.KeyPair(
        (issued / "rest-gateway.crt").read_bytes(), (issued / "rest-gateway.key").read_bytes()
    )
    yield Plane(cp, (ca.path / "ca.crt").read_bytes(), gateway, ca)
    await cp.stop(0)


async def login(
    channel: grpc.aio.Channel,
    namespace: str,
    key: str,
    client: str,
    vouch: pki.KeyPair | None = None,
) -> tuple[grpc.StatusCode, str]:
    """A Token call forwarding client (with the proof of vouch's certificate, if given)."""
    metadata: tuple[tuple[str, str], ...] = ((forwarded.ADDRESS_KEY, client),)
    if vouch is not None:
        proof = forwarded.prove(vouch.cert, vouch.key, client, namespace, time.time())
        metadata += ((forwarded.PROOF_KEY, proof),)
    try:
        await auth_pb2_grpc.AuthServiceStub(channel).Token(
            auth_pb2.TokenRequest(namespace=namespace, key=key), metadata=metadata
        )
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_only_the_gateways_certificate_passes_an_address_on(plane: Plane) -> None:
    """Unvouched failures count against the peer; vouched ones against the address passed on."""
    async with plane.channel() as channel:
        for namespace in ("nosuch1", "nosuch2", "nosuch3"):
            await login(channel, namespace, "wrong", "198.51.100.1")
        # Counted against 127.0.0.1 (the peer), not 198.51.100.1:
        assert await login(channel, "system", SYSTEM_KEY, "198.51.100.1", plane.gateway) == (
            grpc.StatusCode.OK,
            "",
        )
        code, message = await login(channel, "nosuch4", "wrong", "198.51.100.1")
        assert code == grpc.StatusCode.UNAUTHENTICATED and "too many" in message

        for namespace in ("nosuch5", "nosuch6", "nosuch7"):
            await login(channel, namespace, "wrong", "203.0.113.5", plane.gateway)
        code, message = await login(channel, "nosuch8", "wrong", "203.0.113.5", plane.gateway)
        assert code == grpc.StatusCode.UNAUTHENTICATED and "too many" in message
        code, message = await login(channel, "nosuch9", "wrong", "203.0.113.6", plane.gateway)
        assert "too many" not in message


@pytest.mark.parametrize("with_certificate", [True, False])
async def test_the_gateway_vouches_for_its_callers_with_its_certificate(
    plane: Plane, with_certificate: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Through a gateway holding its certificate, the forwarded address is taken; without, not."""
    issued, ca_file = plane.folder.issued, str(plane.folder.path / "ca.crt")
    settings = GatewaySettings(
        listen="127.0.0.1:0",
        api=f"127.0.0.1:{plane.cp.port}",
        metrics_listen="",
        tls=TLSFiles(str(issued / "gateway.crt"), str(issued / "gateway.key"), ca_file),
        client_cert=str(issued / "rest-gateway.crt") if with_certificate else "",
        client_key=str(issued / "rest-gateway.key") if with_certificate else "",
    )
    checked: list[str] = []
    original = forwarded.check

    def check(*args: Any) -> forwarded.Gateway:
        try:
            found = original(*args)
        except pki.PkiError as exc:
            checked.append(f"ignored: {exc}")
            raise
        checked.append(f"believed, from {found.name}")
        return found

    monkeypatch.setattr(forwarded, "check", check)
    runner = await serve(settings)
    host, port = runner.addresses[0][:2]
    context = ssl.create_default_context(cafile=ca_file)
    try:
        async with aiohttp.ClientSession() as session:
            body = {"namespace": "system", "key": SYSTEM_KEY}
            url = f"https://{host}:{port}/auth"
            async with session.post(url, json=body, ssl=context) as answer:
                assert answer.status == 200
    finally:
        await runner.cleanup()
    if with_certificate:
        assert checked == ["believed, from rest-gateway"]
    else:
        assert checked == ["ignored: no gateway certificate's proof came with the address"]
