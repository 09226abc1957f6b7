"""The gateway's channel to several control planes: each call goes to the current one and
moves on to the next when it fails.

``FailoverChannel`` is a ``grpc.aio.Channel`` over one channel per address
(``common.addresslist``), so every stub the gateway builds on it fails over
without the routes knowing. A call is sent only over a connected channel; an
address that does not connect within ``connect_timeout`` is skipped (nothing
was sent). After sending, an UNAVAILABLE answer moves on only for calls that
may be repeated (``repeatable``: reads, health checks, tokens, and
InstanceService.Create, which the gateway always sends with a client request
id); any other call's error goes to the caller. Each address is tried at most
once per call, with ``addresslist.delay`` between moves, then the last error is
raised. A server stream (blob downloads) fails over until its first message;
client streams are sent once, over the current address.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Generator
from typing import Any, Generic, TypeVar

import grpc

from common import addresslist
from common.addresslist import AddressList

T = TypeVar("T")
Req = TypeVar("Req")
Resp = TypeVar("Resp")

# Seconds an address may take to connect before a call moves on.
CONNECT_TIMEOUT = 5.0
# Reads: method names that never change anything.
READ_PREFIXES = ("Get", "List", "Search", "Download")
ALSO_REPEATABLE = frozenset(
    {
        "/grpc.health.v1.Health/Check",
        "/minicloud.v1.AuthService/Token",
        "/minicloud.v1.ConsoleService/VdiConsoleHelper",
        # The gateway sends every create with a client request id.
        "/minicloud.v1.InstanceService/Create",
    }
)
# Named like reads, but they change something.
NOT_REPEATABLE = frozenset({"/minicloud.v1.AgentService/Get"})


def repeatable(method: str) -> bool:
    """Whether a call of method (``/package.Service/Method``) may be sent again after an
    UNAVAILABLE answer."""
    if method in NOT_REPEATABLE:
        return False
    return method in ALSO_REPEATABLE or method.rpartition("/")[2].startswith(READ_PREFIXES)


def unreachable(tried: list[str]) -> grpc.aio.AioRpcError:
    """The error of a call no address could be reached for (nothing was sent)."""
    return grpc.aio.AioRpcError(
        grpc.StatusCode.UNAVAILABLE,
        grpc.aio.Metadata(),
        grpc.aio.Metadata(),
        details=f"cannot reach a control plane (tried {', '.join(tried)})",
    )


class FailoverChannel(grpc.aio.Channel):
    """A channel over a list of control-plane addresses (make it in the serving loop)."""

    def __init__(
        self,
        addresses: AddressList,
        dial: Callable[[str], grpc.aio.Channel],
        connect_timeout: float = CONNECT_TIMEOUT,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.addresses = addresses
        self.dial = dial
        self.connect_timeout = connect_timeout
        self.sleep = sleep
        self.channels: dict[str, grpc.aio.Channel] = {}

    def channel(self, address: str = "") -> grpc.aio.Channel:
        """The channel to address (the current one when empty), dialled on first use."""
        address = address or self.addresses.current
        if address not in self.channels:
            self.channels[address] = self.dial(address)
        return self.channels[address]

    async def connected(self, address: str) -> bool:
        """Whether address's channel is connected, or connects within connect_timeout
        (False as soon as an attempt fails)."""
        channel = self.channel(address)
        final = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)

        async def settled() -> bool:
            state = channel.get_state(try_to_connect=True)
            while state != grpc.ChannelConnectivity.READY and state not in final:
                await channel.wait_for_state_change(state)
                state = channel.get_state(try_to_connect=True)
            return state == grpc.ChannelConnectivity.READY

        try:
            return await asyncio.wait_for(settled(), self.connect_timeout)
        except TimeoutError:
            return False

    async def over_any(self, attempt: Callable[[grpc.aio.Channel], Awaitable[T]], safe: bool) -> T:
        """attempt over the current address, then each next one once, as the module says."""
        last: grpc.aio.AioRpcError | None = None
        tried: list[str] = []
        for moves, address in enumerate(self.addresses.rotation()):
            if moves:
                await self.sleep(addresslist.delay(moves))
            tried.append(address)
            if not await self.connected(address):
                self.addresses.failed(address)
                continue
            try:
                return await attempt(self.channel(address))
            except grpc.aio.AioRpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or not safe:
                    raise
                self.addresses.failed(address)
                last = exc
        raise last if last is not None else unreachable(tried)

    # -- grpc.aio.Channel ------------------------------------------------------

    async def __aenter__(self) -> FailoverChannel:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self, grace: float | None = None) -> None:
        for channel in self.channels.values():
            await channel.close(grace)

    def get_state(self, try_to_connect: bool = False) -> grpc.ChannelConnectivity:
        return self.channel().get_state(try_to_connect)

    async def wait_for_state_change(self, last_observed_state: grpc.ChannelConnectivity) -> None:
        await self.channel().wait_for_state_change(last_observed_state)

    async def channel_ready(self) -> None:
        await self.channel().channel_ready()

    def unary_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryUnaryMultiCallable[Any, Any]:
        def open_on(channel: grpc.aio.Channel) -> Any:
            return channel.unary_unary(method, request_serializer, response_deserializer)

        return _UnaryUnary(self, open_on, repeatable(method))

    def unary_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.UnaryStreamMultiCallable[Any, Any]:
        def open_on(channel: grpc.aio.Channel) -> Any:
            return channel.unary_stream(method, request_serializer, response_deserializer)

        return _UnaryStream(self, open_on, repeatable(method))

    def stream_unary(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamUnaryMultiCallable[Any, Any]:
        return self.channel().stream_unary(method, request_serializer, response_deserializer)

    def stream_stream(
        self,
        method: str,
        request_serializer: Any = None,
        response_deserializer: Any = None,
        _registered_method: bool | None = False,
    ) -> grpc.aio.StreamStreamMultiCallable[Any, Any]:
        return self.channel().stream_stream(method, request_serializer, response_deserializer)


class _UnaryUnary(grpc.aio.UnaryUnaryMultiCallable[Req, Resp]):
    def __init__(self, owner: FailoverChannel, open_on: Callable[..., Any], safe: bool) -> None:
        self.owner = owner
        self.open_on = open_on
        self.safe = safe

    def __call__(self, request: Req, **kwargs: Any) -> grpc.aio.UnaryUnaryCall[Req, Resp]:
        return _Call(
            self.owner, lambda channel: self.open_on(channel)(request, **kwargs), self.safe
        )


class _UnaryStream(grpc.aio.UnaryStreamMultiCallable[Req, Resp]):
    def __init__(self, owner: FailoverChannel, open_on: Callable[..., Any], safe: bool) -> None:
        self.owner = owner
        self.open_on = open_on
        self.safe = safe

    def __call__(self, request: Req, **kwargs: Any) -> grpc.aio.UnaryStreamCall[Req, Resp]:
        return _StreamCall(
            self.owner, lambda channel: self.open_on(channel)(request, **kwargs), self.safe
        )


class _Attempts(Generic[Resp]):
    """What a failing-over call delegates to: the underlying call of its latest attempt."""

    def __init__(
        self, owner: FailoverChannel, start: Callable[[grpc.aio.Channel], Any], safe: bool
    ) -> None:
        self.owner = owner
        self.start = start
        self.safe = safe
        self.last: Any = None
        self.task: asyncio.Task[Any] | None = None

    async def _settled(self) -> Any:
        if self.task is not None:
            await asyncio.wait([self.task])
        return self.last

    def cancel(self) -> bool:
        if self.task is not None:
            self.task.cancel()
        return bool(self.last.cancel()) if self.last is not None else True

    def cancelled(self) -> bool:
        return self.task is not None and self.task.cancelled()

    def done(self) -> bool:
        return self.task is not None and self.task.done()

    def time_remaining(self) -> float | None:
        return self.last.time_remaining() if self.last is not None else None

    def add_done_callback(self, callback: Any) -> None:
        if self.task is not None:
            self.task.add_done_callback(lambda _: callback(self))

    async def initial_metadata(self) -> grpc.aio.Metadata:
        last = await self._settled()
        return await last.initial_metadata() if last is not None else grpc.aio.Metadata()

    async def trailing_metadata(self) -> grpc.aio.Metadata:
        last = await self._settled()
        return await last.trailing_metadata() if last is not None else grpc.aio.Metadata()

    async def code(self) -> grpc.StatusCode:
        last = await self._settled()
        return await last.code() if last is not None else grpc.StatusCode.UNAVAILABLE

    async def details(self) -> str:
        last = await self._settled()
        return await last.details() if last is not None else "no control plane reached"

    async def wait_for_connection(self) -> None:
        last = await self._settled()
        if last is not None:
            await last.wait_for_connection()


class _Call(_Attempts[Resp], grpc.aio.UnaryUnaryCall[Any, Resp]):
    """A unary call sent to the current address, then the next ones, as the module says."""

    def __init__(
        self, owner: FailoverChannel, start: Callable[[grpc.aio.Channel], Any], safe: bool
    ) -> None:
        super().__init__(owner, start, safe)
        self.task = asyncio.ensure_future(owner.over_any(self._attempt, safe))

    async def _attempt(self, channel: grpc.aio.Channel) -> Resp:
        self.last = self.start(channel)
        found: Resp = await self.last
        return found

    def __await__(self) -> Generator[Any, None, Resp]:
        assert self.task is not None
        return self.task.__await__()


class _StreamCall(_Attempts[Resp], grpc.aio.UnaryStreamCall[Any, Resp]):
    """A server stream opened on the current address, then the next ones, until its first
    message arrives."""

    def __init__(
        self, owner: FailoverChannel, start: Callable[[grpc.aio.Channel], Any], safe: bool
    ) -> None:
        super().__init__(owner, start, safe)
        self.messages = self._messages()

    async def _first(self, channel: grpc.aio.Channel) -> Any:
        self.last = self.start(channel)
        return await self.last.read()

    async def _messages(self) -> AsyncIterator[Resp]:
        self.task = asyncio.ensure_future(self.owner.over_any(self._first, self.safe))
        message = await self.task
        while message is not grpc.aio.EOF:
            yield message
            message = await self.last.read()

    def __aiter__(self) -> AsyncIterator[Resp]:
        return self.messages

    async def read(self) -> Any:
        return await anext(self.messages, grpc.aio.EOF)
