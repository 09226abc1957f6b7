"""HTTP errors, and the HTTP error for a failed gRPC call.

Bodies are Shaken Fist's ``{"error": <message>, "status": <code>}``. The HTTP
status for each gRPC status comes from ``common.status`` (the table the
control plane's errors map through too); a route may override it.
"""

from __future__ import annotations

from typing import Any

import grpc

from common.status import http_status


class HttpError(Exception):
    """Answer the request with this status and message.

    The message is a string, except where Shaken Fist answers with an object
    (0.7.2's network delete-all: ``{"deleted": [...], "unable": [...]}``).
    """

    def __init__(self, status: int, message: str | dict[str, Any]) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def from_rpc(exc: grpc.aio.AioRpcError, overrides: dict[str, int] | None = None) -> HttpError:
    """The HTTP error for a failed gRPC call (route overrides first)."""
    name = exc.code().name
    status = (overrides or {}).get(name) or http_status(name)
    message = exc.details() or name.lower().replace("_", " ")
    if name == "UNIMPLEMENTED":
        message = "not implemented by this control plane"
    return HttpError(status, message)
