"""The Prometheus adapter: the only module in the project that imports ``prometheus_client``.

Each process makes one ``Metrics`` (its own registry, never the library's
global one, so tests can run several processes in one Python process) in its
composition root and defines its metrics on it through the factories here:
``counter``, ``histogram``, ``gauge`` and ``computed`` (a gauge family whose
samples a function yields at scrape time). The typed wrappers take label
values as keyword arguments. The registry also holds the standard
``process_*`` families (CPU time, memory, open files). ``render`` is what a scrape of ``/metrics``
answers (the Prometheus text format, version 0.0.4).
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager

import prometheus_client
import structlog
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

log = structlog.get_logger(__name__)

CONTENT_TYPE = prometheus_client.CONTENT_TYPE_LATEST
# Seconds: from sub-millisecond store reads to minutes-long guest operations.
DEFAULT_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    300.0,
)

# Label values -> value, for a computed gauge ((): value when it has no labels).
Samples = Mapping[tuple[str, ...], float]
Compute = Callable[[], Samples | Awaitable[Samples]]


class Counter:
    """A counter, optionally with labels (given by name to ``inc``)."""

    def __init__(self, inner: prometheus_client.Counter, labels: Sequence[str]) -> None:
        self._inner = inner
        self._labelled = bool(labels)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add amount (never negative)."""
        (self._inner.labels(**labels) if self._labelled else self._inner).inc(amount)

    def touch(self, **labels: str) -> None:
        """Make the labelled series exist (at 0), so it shows before it first moves."""
        if self._labelled:
            self._inner.labels(**labels)


class Histogram:
    """A histogram of durations (or sizes), optionally with labels."""

    def __init__(self, inner: prometheus_client.Histogram, labels: Sequence[str]) -> None:
        self._inner = inner
        self._labelled = bool(labels)

    def observe(self, value: float, **labels: str) -> None:
        """Record one observation."""
        (self._inner.labels(**labels) if self._labelled else self._inner).observe(value)

    @contextmanager
    def time(self, **labels: str) -> Iterator[None]:
        """Observe how long the block took, in seconds (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.observe(time.perf_counter() - started, **labels)


class Gauge:
    """A value that goes up and down, optionally with labels."""

    def __init__(self, inner: prometheus_client.Gauge, labels: Sequence[str]) -> None:
        self._inner = inner
        self._labelled = bool(labels)

    def _child(self, labels: Mapping[str, str]) -> prometheus_client.Gauge:
        return self._inner.labels(**labels) if self._labelled else self._inner

    def set(self, value: float, **labels: str) -> None:
        """Set the value."""
        self._child(labels).set(value)

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        """Add amount."""
        self._child(labels).inc(amount)

    def dec(self, amount: float = 1.0, **labels: str) -> None:
        """Subtract amount."""
        self._child(labels).dec(amount)


class _Computed(Collector):
    """A gauge family whose samples were computed just before the scrape."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = list(labels)
        self.samples: Samples = {}

    def collect(self) -> Iterable[GaugeMetricFamily]:
        family = GaugeMetricFamily(self.name, self.documentation, labels=self.labels)
        for values, value in sorted(self.samples.items()):
            family.add_metric(list(values), value)
        yield family

    def describe(self) -> Iterable[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, labels=self.labels)


class Metrics:
    """One process's metrics registry and the factories that fill it."""

    def __init__(self, process: bool = True) -> None:
        # No "<name>_created" series beside every counter and histogram: they double a
        # scrape for a timestamp Prometheus does not use. (The library keeps this switch
        # process-wide; every registry of ours wants it off.)
        prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]
        self._registry = prometheus_client.CollectorRegistry(auto_describe=True)
        self._computed: list[tuple[_Computed, Compute]] = []
        if process:  # the standard process_* families: CPU seconds, memory, open files
            prometheus_client.ProcessCollector(registry=self._registry)

    def counter(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Counter:
        """A counter (name without the ``_total`` suffix the exposition adds)."""
        inner = prometheus_client.Counter(
            name, documentation, labelnames=labels, registry=self._registry
        )
        return Counter(inner, labels)

    def histogram(
        self,
        name: str,
        documentation: str,
        labels: Sequence[str] = (),
        buckets: Sequence[float] = DEFAULT_BUCKETS,
    ) -> Histogram:
        """A histogram with these bucket bounds."""
        inner = prometheus_client.Histogram(
            name, documentation, labelnames=labels, registry=self._registry, buckets=buckets
        )
        return Histogram(inner, labels)

    def gauge(self, name: str, documentation: str, labels: Sequence[str] = ()) -> Gauge:
        """A gauge set by the code that knows its value."""
        inner = prometheus_client.Gauge(
            name, documentation, labelnames=labels, registry=self._registry
        )
        return Gauge(inner, labels)

    def computed(
        self, name: str, documentation: str, labels: Sequence[str], compute: Compute
    ) -> None:
        """A gauge family computed at each scrape: compute returns label values -> value.

        compute may be a coroutine function; it runs in the scraping event loop,
        so it must be cheap (or cache what it reads).
        """
        collector = _Computed(name, documentation, labels)
        self._registry.register(collector)
        self._computed.append((collector, compute))

    async def render(self) -> bytes:
        """Every metric in the Prometheus text format, computed gauges refreshed first."""
        for collector, compute in self._computed:
            try:
                samples = compute()
                collector.samples = await samples if inspect.isawaitable(samples) else samples
            except Exception:  # a failing source keeps its last samples; the scrape goes on
                log.exception("cannot compute a metric", metric=collector.name)
        return prometheus_client.generate_latest(self._registry)
