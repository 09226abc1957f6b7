"""HTTP errors, and the HTTP status for each gRPC status.

Bodies are Shaken Fist's ``{"error": <message>, "status": <code>}``. The
mapping comes from ``controlplane.errors.STATUS`` plus what only the gateway
sees: UNAUTHENTICATED and PERMISSION_DENIED are 401 (Shaken Fist answers 401
to non-admin callers, and the client re-authenticates once on a 401),
UNIMPLEMENTED is 501, anything else 500.
"""

from __future__ import annotations

from typing import Any

import grpc

from controlplane.errors import STATUS


class HttpError(Exception):
    """Answer the request with this status and message.

    The message is a string, except where Shaken Fist answers with an object
    (0.7.2's network delete-all: ``{"deleted": [...], "unable": [...]}``).
    """

    def __init__(self, status: int, message: str | dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


HTTP_FOR_GRPC: dict[str, int] = {
    **{code: http for code, http in STATUS.values()},
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 401,
    "UNIMPLEMENTED": 501,
}


def from_rpc(exc: grpc.aio.AioRpcError, overrides: dict[str, int] | None = None) -> HttpError:
    """The HTTP error for a failed gRPC call (route overrides first)."""
    name = exc.code().name
    status = (overrides or {}).get(name) or HTTP_FOR_GRPC.get(name, 500)
    message = exc.details() or name.lower().replace("_", " ")
    if name == "UNIMPLEMENTED":
        message = "not implemented by this control plane"
    return HttpError(status, message)
