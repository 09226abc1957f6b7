"""The metrics listener: ``GET /metrics`` over plain HTTP, and the node agent's health pages.

Each process serves its ``Metrics`` on its own management address (loopback
by default), apart from its API. A process that has a readiness check also
answers ``GET /healthz`` (alive: always 200) and ``GET /readyz`` (200, or
503 with the reason the check gives). The listener owns its address: a
taken one is an ``OSError`` at start.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from common.metrics import CONTENT_TYPE, Metrics

log = structlog.get_logger(__name__)

# Setting values that turn the listener off.
OFF = ("", "off", "none", "no", "false", "0")
# The reason a process is not ready, or "" when it is.
ReadyCheck = Callable[[], Awaitable[str]]


def enabled(listen: str) -> bool:
    """Whether a metrics listen setting asks for a listener."""
    return listen.strip().lower() not in OFF


def host_port(listen: str) -> tuple[str, int]:
    """host:port (or [v6]:port) split; ValueError when it is not one."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"{listen!r} is not host:port")
    return host.strip("[]") or "127.0.0.1", int(port)


class MetricsServer:
    """Serves one process's metrics (and health, when given a readiness check)."""

    def __init__(self, metrics: Metrics, listen: str, ready: ReadyCheck | None = None) -> None:
        self.metrics = metrics
        self.listen = listen
        self.ready = ready
        self.port = 0
        self._runner: web.AppRunner | None = None

    def _app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        if self.ready is not None:
            app.router.add_get("/healthz", self._healthz)
            app.router.add_get("/readyz", self._readyz)
        return app

    async def _metrics(self, request: web.Request) -> web.Response:
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def _healthz(self, request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _readyz(self, request: web.Request) -> web.Response:
        assert self.ready is not None
        reason = await self.ready()
        if reason:
            return web.json_response({"status": "not ready", "reason": reason}, status=503)
        return web.json_response({"status": "ready"})

    async def start(self) -> None:
        """Listen (OSError, naming the address, when it is taken or not host:port)."""
        try:
            host, port = host_port(self.listen)
        except ValueError as exc:
            raise OSError(f"cannot listen on {self.listen} for metrics: {exc}") from exc
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        try:
            # aiohttp leaves SO_REUSEPORT off: a taken address is an error, not a shared one.
            await web.TCPSite(runner, host, port).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"cannot listen on {self.listen} for metrics: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("metrics serving", listen=self.listen, port=self.port)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
