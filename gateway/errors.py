"""HTTP errors, and the HTTP error for a failed gRPC call.

Bodies are Shaken Fist's ``{"error": <message>, "status": <code>}``. The HTTP
status for each gRPC status comes from ``common.status`` (the table the
control plane's errors map through too); a route may override it.
"""

from __future__ import annotations

from typing import Any

import grpc

from common.status import http_status

# The 5xx statuses the gateway answers with, as Shaken Fist does: 501 not implemented,
# 503 unavailable (retry later), 507 insufficient resources.
DECLARED_5XX = (501, 503, 507)


class HttpError(Exception):
    """Answer the request with this status and message.

    The message is a string, except where Shaken Fist answers with an object
    (0.7.2's network delete-all: ``{"deleted": [...], "unable": [...]}``).
    """

    def __init__(
        self,
        status: int,
        message: str | dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        # Extra response headers (Allow on a 405).
        self.headers = headers or {}


def from_rpc(exc: grpc.aio.AioRpcError, overrides: dict[str, int] | None = None) -> HttpError:
    """The HTTP error for a failed gRPC call (route overrides first)."""
    name = exc.code().name
    status = (overrides or {}).get(name) or http_status(name)
    message = exc.details() or name.lower().replace("_", " ")
    if name == "UNIMPLEMENTED":
        message = "not implemented by this control plane"
    if status >= 500 and status not in DECLARED_5XX:
        # The control plane failed (INTERNAL, UNKNOWN, ...): never a 500 from the gateway.
        status, message = 503, f"the control plane failed ({name}); retry later"
    return HttpError(status, message)
