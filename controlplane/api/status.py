"""Turning control-plane errors into gRPC statuses, in one place."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from controlplane.errors import MiniCloudError, status_of

log = structlog.get_logger(__name__)

T = TypeVar("T")
NAMESPACE_KEY = "x-namespace"
DEFAULT_NAMESPACE = "system"


def namespace_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The caller's namespace, from call metadata."""
    for key, value in context.invocation_metadata() or ():
        if key == NAMESPACE_KEY and isinstance(value, str) and value:
            return value
    return DEFAULT_NAMESPACE


async def abort_for(context: grpc.aio.ServicerContext[Any, Any], error: MiniCloudError) -> None:
    """End a call (a streaming one, typically) with the status mapped from error."""
    await context.abort(getattr(grpc.StatusCode, status_of(error)[0]), str(error))


def grpc_errors(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Abort the call with the mapped status when a MiniCloudError escapes."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            return await method(self, request, context)
        except MiniCloudError as exc:
            code_name, _ = status_of(exc)
            code, message = getattr(grpc.StatusCode, code_name), str(exc)
        except grpc.aio.AbortError:
            raise
        except Exception:
            log.exception("unexpected error", method=method.__name__)
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the control plane log"
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    return wrapper
