"""Who is calling, and turning control-plane errors into gRPC statuses, in one place.

The authentication interceptor (controlplane.api.auth) sets the caller's
namespace for the duration of each call; servicers read it with
``namespace_of``. grpc.aio runs interceptors and the handler of one call in
the same task, so a context variable carries it without globals.
"""

from __future__ import annotations

import contextvars
import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
import structlog

from controlplane.errors import MiniCloudError, Unauthenticated, message_of, status_of
from controlplane.store.protocol import StoreUnavailable

log = structlog.get_logger(__name__)

T = TypeVar("T")
NAMESPACE_KEY = "x-namespace"
AUTHORIZATION_KEY = "authorization"

# The namespace the current call acts in, set by the authentication interceptor.
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("minicloud_caller", default="")
# The namespace whose token the call carries (CALLER is the one it acts in, which
# x-namespace lets system change): administrator checks that must hold whatever
# namespace system acts in read this.
AUTHENTICATED: contextvars.ContextVar[str] = contextvars.ContextVar(
    "minicloud_authenticated", default=""
)


def namespace_of(context: grpc.aio.ServicerContext[Any, Any]) -> str:
    """The namespace the current call acts in (Unauthenticated if it has none)."""
    caller = CALLER.get()
    if not caller:
        raise Unauthenticated("this call needs 'authorization: Bearer <token>'")
    return caller


def authenticated_as() -> str:
    """The namespace of the current call's token ("" if it has none)."""
    return AUTHENTICATED.get()


def metadata_value(context_or_details: Any, key: str) -> str:
    """One call-metadata value ("" when absent), from a context or handler call details."""
    metadata = (
        context_or_details.invocation_metadata
        if not callable(getattr(context_or_details, "invocation_metadata", None))
        else context_or_details.invocation_metadata()
    )
    for k, value in metadata or ():
        if k == key and isinstance(value, str):
            return value
    return ""


async def abort_for(context: grpc.aio.ServicerContext[Any, Any], error: MiniCloudError) -> None:
    """End a call (a streaming one, typically) with the status mapped from error."""
    await context.abort(getattr(grpc.StatusCode, status_of(error)[0]), message_of(error))


def grpc_errors(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """Abort the call with the mapped status when a MiniCloudError escapes.

    A store that cannot be reached (``StoreUnavailable``) is UNAVAILABLE; any
    other exception is logged and answered INTERNAL.
    """

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> T:
        try:
            return await method(self, request, context)
        except MiniCloudError as exc:
            code_name, _ = status_of(exc)
            code, message = getattr(grpc.StatusCode, code_name), message_of(exc)
        except grpc.aio.AbortError:
            raise
        except StoreUnavailable as exc:  # etcd unreachable or slow: the caller may retry
            log.warning("store unavailable", method=method.__name__, error=str(exc))
            code, message = grpc.StatusCode.UNAVAILABLE, "the store is unavailable; try again"
        except Exception:
            log.exception("unexpected error", method=method.__name__)
            code, message = grpc.StatusCode.INTERNAL, "internal error; see the control plane log"
        await context.abort(code, message)
        raise AssertionError("unreachable: abort raises")

    return wrapper
