"""The metrics listener: ``GET /metrics`` over plain HTTP, and the node agent's health pages.

Each process serves its ``Metrics`` on its own management address (loopback
by default), apart from its API. A process that has a readiness check also
answers ``GET /healthz`` (alive: always 200) and ``GET /readyz`` (200, or
503 with the reason the check gives). The listener owns its address: a
taken one is an ``OSError`` at start. Plain HTTP by default (scrapes commonly
stay on a management network); with ``MetricsTLS`` it is HTTPS with the
cluster's certificates, and with a client CA it asks scrapers for theirs.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass

import structlog
from aiohttp import web

from common.metrics import CONTENT_TYPE, Metrics

log = structlog.get_logger(__name__)

# Setting values that turn the listener off.
OFF = ("", "off", "none", "no", "false", "0")
# The reason a process is not ready, or "" when it is.
ReadyCheck = Callable[[], Awaitable[str]]


@dataclass(frozen=True)
class MetricsTLS:
    """HTTPS for a metrics listener: its certificate and key, and optionally the CA
    whose client certificates scrapers must present."""

    cert: str
    key: str
    client_ca: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str], prefix: str) -> MetricsTLS | None:
        """From PREFIX_TLS_CERT, PREFIX_TLS_KEY and PREFIX_TLS_CLIENT_CA; None when unset.

        ValueError when only one of the certificate and the key is given.
        """
        cert = env.get(f"{prefix}_TLS_CERT", "")
        key = env.get(f"{prefix}_TLS_KEY", "")
        if not cert and not key:
            return None
        if not (cert and key):
            raise ValueError(f"{prefix}_TLS_CERT and {prefix}_TLS_KEY go together")
        return cls(cert, key, env.get(f"{prefix}_TLS_CLIENT_CA", ""))

    def context(self) -> ssl.SSLContext:
        """A server context (TLS 1.2 or later); OSError or ssl.SSLError for bad files."""
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        context.load_cert_chain(self.cert, self.key)
        if self.client_ca:
            context.load_verify_locations(self.client_ca)
            context.verify_mode = ssl.CERT_REQUIRED
        return context


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

    def __init__(
        self,
        metrics: Metrics,
        listen: str,
        ready: ReadyCheck | None = None,
        tls: MetricsTLS | None = None,
    ) -> None:
        self.metrics = metrics
        self.listen = listen
        self.ready = ready
        self.tls = tls
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
        try:
            context = self.tls.context() if self.tls is not None else None
        except (OSError, ssl.SSLError) as exc:
            raise OSError(f"cannot serve metrics over TLS: {exc}") from exc
        runner = web.AppRunner(self._app(), access_log=None)
        await runner.setup()
        try:
            # aiohttp leaves SO_REUSEPORT off: a taken address is an error, not a shared one.
            await web.TCPSite(runner, host, port, ssl_context=context).start()
        except OSError as exc:
            await runner.cleanup()
            raise OSError(
                f"cannot listen on {self.listen} for metrics: {exc.strerror or exc}"
            ) from exc
        self._runner = runner
        self.port = int(runner.addresses[0][1])
        log.info("metrics serving", listen=self.listen, port=self.port, tls=context is not None)

    async def stop(self) -> None:
        """Stop listening."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
