"""The node agent's credentials: its node certificate, or a system key traded for tokens.

With TLS (the default) a node agent dials the control plane's node listener
with its node certificate: the certificate is who it is, and no token is
sent. Without TLS (``MINICLOUD_NODE_PLAINTEXT=1``) node agents authenticate
like any caller: they trade a key of the system namespace
(``MINICLOUD_NODE_KEY``) for a token through AuthService.Token and send it as
``authorization: Bearer <token>``. A token is reused until a minute before it
expires, or until a call says it is no longer good.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import grpc

from common.tlsfiles import Material
from protos import auth_pb2, auth_pb2_grpc

Metadata = tuple[tuple[str, str], ...]
REFRESH_MARGIN = 60.0


class Credentials:
    """Mints and caches this node's bearer token."""

    def __init__(
        self,
        namespace: str,
        key: str,
        clock: Callable[[], float] = time.monotonic,
        tls: Material | None = None,
    ) -> None:
        self.namespace = namespace
        self.key = key
        self.tls = tls
        self.clock = clock
        self._token = ""
        self._expires = 0.0

    async def metadata(self, channel: grpc.aio.Channel) -> Metadata:
        """Call metadata carrying a current token (minted over channel when needed); none
        with a certificate."""
        if self.tls is not None:
            return ()
        if not self._token or self.clock() > self._expires - REFRESH_MARGIN:
            stub = auth_pb2_grpc.AuthServiceStub(channel)
            reply = await stub.Token(auth_pb2.TokenRequest(namespace=self.namespace, key=self.key))
            self._token = reply.access_token
            self._expires = self.clock() + reply.expires_in
        return (("authorization", f"Bearer {self._token}"),)

    def forget(self) -> None:
        """Drop the cached token (after the control plane refused it)."""
        self._token = ""

    def channel(self, target: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
        """A channel to the control plane: TLS with this node's certificate, or plaintext."""
        if self.tls is None:
            return grpc.aio.insecure_channel(target, options=list(options))
        creds = grpc.ssl_channel_credentials(
            root_certificates=self.tls.ca,
            private_key=self.tls.key,
            certificate_chain=self.tls.cert,
        )
        return grpc.aio.secure_channel(target, creds, options=list(options))
