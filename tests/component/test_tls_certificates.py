"""The CA's certificates over real gRPC TLS: mutual TLS that knows which node is calling."""

from __future__ import annotations

import datetime
from collections.abc import AsyncIterator
from typing import Any

import grpc
import pytest

from common import pki

NOW = datetime.datetime.now(datetime.UTC)
METHOD = "/test.Who/Name"


def _ident(data: bytes) -> bytes:
    return data


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.create_ca("tls-test-cluster", NOW)


@pytest.fixture
async def server(ca: pki.KeyPair) -> AsyncIterator[int]:
    """A server with a server certificate that requires a client certificate of the CA."""

    async def name(request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        pem = next(iter(context.auth_context()["x509_pem_cert"]))
        return pki.node_name(pem, ca.cert, datetime.datetime.now(datetime.UTC)).encode()

    handler = grpc.method_handlers_generic_handler(
        "test.Who",
        {"Name": grpc.unary_unary_rpc_method_handler(name, _ident, _ident)},
    )
    srv = grpc.aio.server()
    srv.add_generic_rpc_handlers((handler,))
    cert = pki.issue(ca, "server", "cp", NOW, sans=("127.0.0.1", "localhost"))
    creds = grpc.ssl_server_credentials(
        [(cert.key, cert.cert)], root_certificates=ca.cert, require_client_auth=True
    )
    port = srv.add_secure_port("127.0.0.1:0", creds)
    await srv.start()
    yield port
    await srv.stop(None)


async def call(channel: grpc.aio.Channel) -> bytes:
    async with channel:
        result = await channel.unary_unary(METHOD, _ident, _ident)(b"", timeout=5)
        return bytes(result)


def secure(port: int, ca_pem: bytes, client: pki.KeyPair | None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(
        root_certificates=ca_pem,
        private_key=client.key if client else None,
        certificate_chain=client.cert if client else None,
    )
    return grpc.aio.secure_channel(f"127.0.0.1:{port}", creds)


async def test_a_node_certificate_is_accepted_and_names_its_node(
    ca: pki.KeyPair, server: int
) -> None:
    """The server learns which node calls from the certificate alone."""
    node = pki.issue(ca, "node", "node7", NOW)
    assert await call(secure(server, ca.cert, node)) == b"node7"


@pytest.mark.parametrize("how", ["plaintext", "no client certificate", "another CA's certificate"])
async def test_anything_else_is_refused_at_the_handshake(
    ca: pki.KeyPair, server: int, how: str
) -> None:
    """Plaintext, no client certificate, or one from another cluster's CA never reach a handler."""
    if how == "plaintext":
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{server}")
    elif how == "no client certificate":
        channel = secure(server, ca.cert, None)
    else:
        other = pki.create_ca("another-cluster", NOW)
        channel = secure(server, ca.cert, pki.issue(other, "node", "node7", NOW))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call(channel)
    assert err.value.code() == grpc.StatusCode.UNAVAILABLE
