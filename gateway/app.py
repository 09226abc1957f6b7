"""The gateway's entry point and composition root: settings, stubs, routes, metrics, server."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import structlog
from aiohttp import web

from common import logs
from common.metricsserver import MetricsServer, enabled
from gateway.admission import PUBLIC_PATHS
from gateway.backend import Backend
from gateway.metrics import METRICS, METRICS_SERVER, GatewayMetrics
from gateway.middleware import gateway_middleware
from gateway.openapi import document
from gateway.routes import (
    agent,
    artifacts,
    auth,
    blobs,
    consoles,
    instances,
    metadata,
    networks,
    nodes,
    root,
)
from gateway.routing import BACKEND, SETTINGS, Route, aiohttp_handler
from gateway.settings import GatewaySettings
from gateway.tokencheck import TOKENS, TokenChecker

log = structlog.get_logger(__name__)


def all_routes() -> list[Route]:
    """Every route, in the order they are matched."""
    return [
        route
        for module in (
            root,
            auth,
            instances,
            agent,
            consoles,
            networks,
            nodes,
            blobs,
            artifacts,
            metadata,
        )
        for route in module.table.routes
    ]


def build_app(settings: GatewaySettings) -> web.Application:
    """The aiohttp application (stubs and the metrics listener start with it, in its loop)."""
    app = web.Application(
        middlewares=[gateway_middleware],
        client_max_size=settings.max_chunk_bytes + settings.max_json_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    routes = all_routes()
    app[root.OPENAPI] = document(routes)
    app[PUBLIC_PATHS] = frozenset(route.path for route in routes if route.public)
    app[TOKENS] = TokenChecker(settings.token_check_ttl, min(settings.call_timeout, 10.0))
    for route in routes:
        app.router.add_route(route.method, route.path, aiohttp_handler(route))

    async def backend(app: web.Application) -> AsyncIterator[None]:
        app[BACKEND] = Backend.connect(settings.api)
        yield
        await app[BACKEND].close()

    app.cleanup_ctx.append(backend)
    if enabled(settings.metrics_listen):
        app[METRICS_SERVER] = MetricsServer(
            app[METRICS].registry, settings.metrics_listen, tls=settings.metrics_tls
        )

        async def metrics(app: web.Application) -> AsyncIterator[None]:
            await app[METRICS_SERVER].start()
            yield
            await app[METRICS_SERVER].stop()

        app.cleanup_ctx.append(metrics)
    return app


async def serve(settings: GatewaySettings) -> web.AppRunner:
    """Start serving; returns the runner (``await runner.cleanup()`` stops it)."""
    runner = web.AppRunner(build_app(settings), access_log=None)
    try:
        await runner.setup()  # starts the metrics listener: its address may be taken
    except OSError:
        await runner.cleanup()
        raise
    host, port = settings.host_port
    try:
        # aiohttp leaves SO_REUSEPORT off: a taken address is an error, not a shared one.
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen on {settings.listen}: {exc.strerror or exc}") from exc
    log.info("gateway serving", listen=settings.listen, api=settings.api)
    return runner


async def run(settings: GatewaySettings) -> None:
    """Serve until SIGTERM or SIGINT."""
    runner = await serve(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("gateway shutting down")
    await runner.cleanup()


def main() -> None:
    """Console script: minicloud-gateway."""
    settings = GatewaySettings.from_env()
    logs.configure(json=settings.log_json)
    try:
        asyncio.run(run(settings))
    except OSError as exc:
        log.error("cannot start the gateway", error=str(exc))
        raise SystemExit(1) from None
