"""The control plane's error tree, and what each error means to a caller.

    MiniCloudError (retryable: bool)
    ├── InvalidArgument      bad input; fix the request        INVALID_ARGUMENT / 400
    ├── Unauthenticated      no, bad or expired token/key      UNAUTHENTICATED / 401
    ├── PermissionDenied     only the system namespace may     PERMISSION_DENIED / 401
    ├── NotFound             no such object (or not yours)     NOT_FOUND / 404
    ├── AlreadyExists        the name is taken                 ALREADY_EXISTS / 409
    ├── FailedPrecondition   not allowed in the current state  FAILED_PRECONDITION / 409
    │   └── Busy             lost every compare-and-set race;  FAILED_PRECONDITION / 409
    │                        retry (controlplane.store.occ)
    ├── ResourceExhausted    no node can take it               RESOURCE_EXHAUSTED / 507
    ├── Unavailable          a node is not connected; retry    UNAVAILABLE / 406
    └── DeadlineExceeded     a node did not answer in time     DEADLINE_EXCEEDED / 406

``STATUS`` maps each class to its gRPC status code name; the HTTP status for
each code is in ``common.status``, the table the REST gateway uses too.
``message_of`` is what a caller is told: the message, cut to ``MAX_MESSAGE``
characters (messages quote the caller's input, and gRPC clients refuse a
status message over 16 KiB with RESOURCE_EXHAUSTED, which would hide the
real status).
"""

from __future__ import annotations

from common.status import http_status


class MiniCloudError(Exception):
    """Base of every error the control plane reports to callers."""

    retryable = False


class InvalidArgument(MiniCloudError):
    """The request is malformed or asks for something that cannot exist."""


class Unauthenticated(MiniCloudError):
    """The caller did not prove who it is (missing, bad or expired token, wrong key)."""


class PermissionDenied(MiniCloudError):
    """The caller is known but may not do this (administrator-only calls).

    Shaken Fist answers these with HTTP 401, and its client relies on it.
    """


class NotFound(MiniCloudError):
    """No such object in the caller's namespace."""


class AlreadyExists(MiniCloudError):
    """An object with that name already exists in the namespace."""


class FailedPrecondition(MiniCloudError):
    """The object's current state does not allow the operation."""


class Busy(FailedPrecondition):
    """The object changed under every attempt to change it; trying again may work.

    Raised by ``controlplane.store.occ`` when its attempts run out. It keeps
    FailedPrecondition's status (what callers saw before the helper existed).
    """

    retryable = True


class ResourceExhausted(MiniCloudError):
    """No node has room for the request."""


class Unavailable(MiniCloudError):
    """A needed node is not connected right now."""

    retryable = True


class DeadlineExceeded(MiniCloudError):
    """A node did not answer in time."""

    retryable = True


# class -> gRPC status code name
STATUS: dict[type[MiniCloudError], str] = {
    InvalidArgument: "INVALID_ARGUMENT",
    Unauthenticated: "UNAUTHENTICATED",
    PermissionDenied: "PERMISSION_DENIED",
    NotFound: "NOT_FOUND",
    AlreadyExists: "ALREADY_EXISTS",
    FailedPrecondition: "FAILED_PRECONDITION",
    ResourceExhausted: "RESOURCE_EXHAUSTED",
    Unavailable: "UNAVAILABLE",
    DeadlineExceeded: "DEADLINE_EXCEEDED",
}


def status_of(error: MiniCloudError) -> tuple[str, int]:
    """The gRPC code name and HTTP status for an error (INTERNAL/500 if unmapped)."""
    for cls in type(error).__mro__:
        if cls in STATUS:
            return STATUS[cls], http_status(STATUS[cls])
    return ("INTERNAL", http_status("INTERNAL"))


# Characters of an error message a caller is told (the rest is cut, marked "...").
MAX_MESSAGE = 1000


def message_of(error: BaseException) -> str:
    """What a caller is told of error: its message, at most MAX_MESSAGE characters."""
    message = str(error) or type(error).__name__
    if len(message) <= MAX_MESSAGE:
        return message
    return message[: MAX_MESSAGE - 3] + "..."
