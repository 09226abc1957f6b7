"""Requests whose bytes are no valid message end INVALID_ARGUMENT, not UNKNOWN.

grpc answers UNKNOWN ("Unexpected DecodeError") when a request does not parse
(bad UTF-8 in a string field, a truncated field). ``lenient`` wraps a method
handler so that its deserializer never raises: an undecodable request becomes
an ``Undecodable`` value, and the wrapped behaviour aborts the call with
INVALID_ARGUMENT before the servicer sees it (for streamed requests, when the
bad message is reached).
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any, TypeAlias

import grpc

Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"


@dataclass(frozen=True)
class Undecodable:
    """A request that did not parse, and why."""

    reason: str


async def _refuse(context: Context, bad: Undecodable) -> None:
    await context.abort(
        grpc.StatusCode.INVALID_ARGUMENT, f"the request is not a valid message: {bad.reason}"[:300]
    )


async def _checked(items: AsyncIterator[Any], context: Context) -> AsyncIterator[Any]:
    async for item in items:
        if isinstance(item, Undecodable):
            await _refuse(context, item)
        yield item


async def _answers(result: Any) -> AsyncIterator[Any]:
    """A streaming behaviour's answers: those it yields, or none if it writes them itself."""
    if hasattr(result, "__aiter__"):
        async for item in result:
            yield item
    elif inspect.isawaitable(result):
        await result


def lenient(handler: Handler | None) -> Handler | None:
    """handler with a deserializer that never raises (see the module docstring)."""
    if handler is None or handler.request_deserializer is None:
        return handler
    deserialize = handler.request_deserializer

    def safe(raw: bytes) -> Any:
        try:
            return deserialize(raw)
        except Exception as exc:
            return Undecodable(str(exc) or type(exc).__name__)

    kinds: dict[tuple[bool, bool], tuple[str, Callable[..., Any]]] = {
        (False, False): ("unary_unary", grpc.unary_unary_rpc_method_handler),
        (False, True): ("unary_stream", grpc.unary_stream_rpc_method_handler),
        (True, False): ("stream_unary", grpc.stream_unary_rpc_method_handler),
        (True, True): ("stream_stream", grpc.stream_stream_rpc_method_handler),
    }
    name, make = kinds[(handler.request_streaming, handler.response_streaming)]
    inner = getattr(handler, name)
    if name == "unary_unary":

        async def unary_unary(request: Any, context: Context) -> Any:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            return await inner(request, context)

        behaviour: Callable[..., Any] = unary_unary
    elif name == "unary_stream":

        async def unary_stream(request: Any, context: Context) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _refuse(context, request)
            async for item in _answers(inner(request, context)):
                yield item

        behaviour = unary_stream
    elif name == "stream_unary":

        async def stream_unary(requests: AsyncIterator[Any], context: Context) -> Any:
            return await inner(_checked(requests, context), context)

        behaviour = stream_unary
    else:

        async def stream_stream(
            requests: AsyncIterator[Any], context: Context
        ) -> AsyncIterator[Any]:
            async for item in _answers(inner(_checked(requests, context), context)):
                yield item

        behaviour = stream_stream
    wrapped: Handler = make(
        behaviour,
        request_deserializer=safe,
        response_serializer=handler.response_serializer,
    )
    return wrapped
