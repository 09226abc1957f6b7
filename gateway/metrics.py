"""The REST gateway's metrics: every family it exposes, defined in one place.

``GatewayMetrics`` is made once by ``app.build_app`` on a fresh ``Metrics``
registry and kept in the application (``METRICS``); the middleware counts
and times every request by its route template (``/instances/{ref}``, never
the raw path, so the label stays bounded).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web

from common.metrics import Counter, Histogram, Metrics
from common.metricsserver import MetricsServer

# Methods counted by name; any other is counted as "other".
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"


@dataclass
class GatewayMetrics:
    """The gateway's counters and histograms, on its own registry."""

    registry: Metrics = field(default_factory=Metrics)

    def __post_init__(self) -> None:
        m = self.registry
        self.http_requests: Counter = m.counter(
            "minicloud_http_requests",
            "REST requests answered, by route template, method and status code.",
            ["route", "method", "code"],
        )
        self.http_duration: Histogram = m.histogram(
            "minicloud_http_request_duration_seconds",
            "Time to answer a REST request, by route template and method.",
            ["route", "method"],
        )

    def observe(self, request: web.Request, status: int, seconds: float) -> None:
        """Count one answered request."""
        route = request.match_info.route.resource
        template = route.canonical if route is not None else UNMATCHED
        method = request.method if request.method in METHODS else "other"
        self.http_requests.inc(route=template, method=method, code=str(status))
        self.http_duration.observe(seconds, route=template, method=method)


METRICS: web.AppKey[GatewayMetrics] = web.AppKey("metrics", GatewayMetrics)
METRICS_SERVER: web.AppKey[MetricsServer] = web.AppKey("metrics_server", MetricsServer)
