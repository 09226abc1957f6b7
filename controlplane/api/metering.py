"""The metrics interceptor: counts and times every gRPC call the control plane serves.

It sits outside the authentication interceptor, so refused calls are counted
too (``UNAUTHENTICATED``). The method label is ``Service/Method`` without the
package; calls to methods nobody serves are not counted (their names come
from callers, so they would make the label unbounded). Streaming calls are
counted and timed when they end.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeAlias

import grpc

from controlplane.metrics import PlaneMetrics

Context = grpc.aio.ServicerContext[Any, Any]
Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
_BY_VALUE = {code.value[0]: code for code in grpc.StatusCode}


def method_label(method: str) -> str:
    """ "/minicloud.v1.InstanceService/Create" -> "InstanceService/Create"."""
    service, _, name = method.lstrip("/").rpartition("/")
    return f"{service.rsplit('.', 1)[-1]}/{name}"


def code_of(context: Context, fallback: str) -> str:
    """The status a call ended with: what the context holds, else fallback."""
    try:
        code: Any = context.code()
    except Exception:
        code = None
    if isinstance(code, int):
        code = _BY_VALUE.get(code)
    if isinstance(code, grpc.StatusCode):
        return code.name
    return fallback


class MetricsInterceptor(grpc.aio.ServerInterceptor):
    """Counts each served call by method and code, and times it by method."""

    def __init__(self, metrics: PlaneMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        return self._wrap(handler, method_label(handler_call_details.method))

    def _done(self, method: str, context: Context, started: float, fallback: str) -> None:
        self.metrics.rpc_requests.inc(method=method, code=code_of(context, fallback))
        self.metrics.rpc_duration.observe(time.perf_counter() - started, method=method)

    def _wrap(self, handler: Handler, method: str) -> Handler:
        streaming = handler.response_streaming
        if handler.request_streaming and streaming:
            behaviour, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
        elif handler.request_streaming:
            behaviour, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
        elif streaming:
            behaviour, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        else:
            behaviour, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        inner: Any = behaviour

        async def unary(request: Any, context: Context) -> Any:
            started, ended = time.perf_counter(), "UNKNOWN"
            try:
                result = inner(request, context)
                if inspect.isawaitable(result):
                    result = await result
                ended = "OK"
                return result
            except asyncio.CancelledError:
                ended = "CANCELLED"
                raise
            finally:
                self._done(method, context, started, ended)

        async def stream(request: Any, context: Context) -> AsyncIterator[Any]:
            started, ended = time.perf_counter(), "UNKNOWN"
            try:
                result = inner(request, context)
                if inspect.isawaitable(result):  # a servicer writing through context.write
                    await result
                else:
                    async with contextlib.aclosing(result):  # its finally runs now, not at GC
                        async for reply in result:
                            yield reply
                ended = "OK"
            except (asyncio.CancelledError, GeneratorExit):
                ended = "CANCELLED"
                raise
            finally:
                self._done(method, context, started, ended)

        wrapped: Any = make(
            stream if streaming else unary,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
        result: Handler = wrapped
        return result
