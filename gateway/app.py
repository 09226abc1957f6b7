"""The gateway's entry point and composition root: settings, stubs, routes, metrics, server."""

from __future__ import annotations

import asyncio
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import structlog
from aiohttp import web

from common import logs, pki
from common.metricsserver import MetricsServer, enabled
from common.tlsfiles import TLSFiles
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
    snapshots,
)
from gateway.routing import BACKEND, SETTINGS, Route, aiohttp_handler
from gateway.settings import GatewaySettings
from gateway.tokencheck import TOKENS, TokenCheck, TokenChecker, load_keyring

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
            snapshots,
            networks,
            nodes,
            blobs,
            artifacts,
            metadata,
        )
        for route in module.table.routes
    ]


def build_app(settings: GatewaySettings) -> web.Application:
    """The aiohttp application (stubs and the metrics listener start with it, in its loop).

    OSError when a token public key file cannot be used.
    """
    app = web.Application(
        middlewares=[gateway_middleware],
        client_max_size=settings.max_chunk_bytes + settings.max_json_bytes,
    )
    app[SETTINGS] = settings
    app[METRICS] = GatewayMetrics()
    routes = all_routes()
    app[root.OPENAPI] = document(routes)
    app[PUBLIC_PATHS] = frozenset(route.path for route in routes if route.public)
    local = TokenCheck(load_keyring(settings.token_public_keys), settings.token_clock_skew)
    app[TOKENS] = TokenChecker(
        settings.token_check_ttl, min(settings.call_timeout, 10.0), local=local
    )
    for route in routes:
        app.router.add_route(route.method, route.path, aiohttp_handler(route))

    app[auth.VOUCHER] = voucher(settings)

    async def backend(app: web.Application) -> AsyncIterator[None]:
        ca = settings.tls.read().ca if settings.tls is not None else b""
        app[BACKEND] = Backend.connect(settings.api, ca)
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


def voucher(settings: GatewaySettings) -> auth.Voucher | None:
    """The gateway certificate it vouches for callers' addresses with (None: it has none).

    OSError when a file cannot be read or is not a gateway certificate with its key.
    """
    if not settings.client_cert and not settings.client_key:
        if settings.tls is not None:
            log.warning(
                "no gateway certificate (MINICLOUD_GATEWAY_CLIENT_CERT/_KEY): the control "
                "plane counts every login through this gateway under the gateway's address"
            )
        return None
    try:
        found = auth.Voucher(
            Path(settings.client_cert).read_bytes(), Path(settings.client_key).read_bytes()
        )
        kind = pki.info(found.cert).kind
        if kind != "gateway":
            raise pki.PkiError(f"{settings.client_cert} is a {kind or 'foreign'} certificate")
        pki.verify(found.cert, b"key check", pki.sign(found.key, b"key check"))  # a pair
    except (OSError, pki.PkiError) as exc:
        raise OSError(f"cannot use the gateway certificate {settings.client_cert}: {exc}") from exc
    return found


def https(tls: TLSFiles) -> ssl.SSLContext:
    """The listener's TLS context (TLS 1.2 or later); OSError when a file cannot be used."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(tls.cert, tls.key)
    except ssl.SSLError as exc:
        raise OSError(f"cannot use the TLS certificate {tls.cert}: {exc}") from exc
    return context


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
        context = https(settings.tls) if settings.tls is not None else None
        # aiohttp leaves SO_REUSEPORT off: a taken address is an error, not a shared one.
        await web.TCPSite(runner, host, port, ssl_context=context).start()
    except OSError as exc:
        await runner.cleanup()
        raise OSError(f"cannot listen on {settings.listen}: {exc.strerror or exc}") from exc
    if context is None:
        log.warning(
            "serving plain HTTP: keys and tokens cross the network in the clear "
            "(MINICLOUD_GATEWAY_PLAINTEXT)",
            listen=settings.listen,
        )
    log.info("gateway serving", listen=settings.listen, api=settings.api, tls=context is not None)
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
    try:
        settings = GatewaySettings.from_env()
    except ValueError as exc:
        logs.configure()
        log.error("cannot start the gateway", error=str(exc))
        raise SystemExit(1) from None
    logs.configure(json=settings.log_json)
    try:
        asyncio.run(run(settings))
    except OSError as exc:
        log.error("cannot start the gateway", error=str(exc))
        raise SystemExit(1) from None
