"""The status table: each gRPC status code minicloud answers with, and its HTTP status.

The control plane names a code for each of its errors (``controlplane.errors``);
the REST gateway answers a failed gRPC call with the HTTP status listed here.
Codes are the names of ``grpc.StatusCode`` members, so this module needs no
gRPC import. UNAUTHENTICATED and PERMISSION_DENIED are both 401: Shaken Fist
answers 401 to non-admin callers, and its client re-authenticates once on a 401.
"""

from __future__ import annotations

HTTP_STATUS: dict[str, int] = {
    "INVALID_ARGUMENT": 400,
    "UNAUTHENTICATED": 401,
    "PERMISSION_DENIED": 401,
    "NOT_FOUND": 404,
    "ALREADY_EXISTS": 409,
    "FAILED_PRECONDITION": 409,
    "RESOURCE_EXHAUSTED": 507,
    "UNAVAILABLE": 406,
    "DEADLINE_EXCEEDED": 406,
    "UNIMPLEMENTED": 501,
    "INTERNAL": 500,
}


def http_status(code: str) -> int:
    """The HTTP status for a gRPC status code name (500 for any code not listed)."""
    return HTTP_STATUS.get(code, 500)
