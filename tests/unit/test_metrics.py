"""The Prometheus adapter and its listener: per-process registries, computed gauges, /metrics."""

from __future__ import annotations

import asyncio
import socket

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from common.metrics import Metrics
from common.metricsserver import MetricsServer, enabled, host_port


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape: (name, sorted labels) -> value."""
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


async def test_two_registries_hold_the_same_names_apart() -> None:
    """Two processes in one Python process each count on their own registry."""
    first, second = Metrics(), Metrics()
    a = first.counter("minicloud_things", "Things.", ["kind"])
    b = second.counter("minicloud_things", "Things.", ["kind"])
    a.inc(kind="x")
    a.inc(2, kind="x")
    b.inc(kind="y")
    one = samples((await first.render()).decode())
    two = samples((await second.render()).decode())
    assert one[("minicloud_things_total", (("kind", "x"),))] == 3
    assert ("minicloud_things_total", (("kind", "y"),)) not in one
    assert two[("minicloud_things_total", (("kind", "y"),))] == 1


async def test_histogram_times_a_block_even_when_it_raises() -> None:
    """time() observes the block's duration whether it returns or raises."""
    metrics = Metrics()
    latency = metrics.histogram("minicloud_op_seconds", "Op.", ["op"])
    with latency.time(op="ok"):
        pass
    with pytest.raises(ValueError), latency.time(op="bad"):
        raise ValueError("boom")
    got = samples((await metrics.render()).decode())
    assert got[("minicloud_op_seconds_count", (("op", "ok"),))] == 1
    assert got[("minicloud_op_seconds_count", (("op", "bad"),))] == 1


async def test_computed_gauges_are_read_at_each_scrape() -> None:
    """A computed gauge (sync or async) shows what its function returns at scrape time."""
    metrics = Metrics()
    counts: dict[tuple[str, ...], float] = {("on",): 2.0}

    async def read() -> dict[tuple[str, ...], float]:
        return dict(counts)

    metrics.computed("minicloud_power", "By power.", ["power_state"], read)
    metrics.computed("minicloud_answer", "Unlabelled.", [], lambda: {(): 42.0})
    first = samples((await metrics.render()).decode())
    counts[("off",)] = 1.0
    second = samples((await metrics.render()).decode())
    assert first[("minicloud_power", (("power_state", "on"),))] == 2
    assert ("minicloud_power", (("power_state", "off"),)) not in first
    assert second[("minicloud_power", (("power_state", "off"),))] == 1
    assert second[("minicloud_answer", ())] == 42


async def test_a_failing_computed_gauge_keeps_the_scrape_going() -> None:
    """A computed gauge whose source fails keeps its last samples; others still show."""
    metrics = Metrics()
    state = {"fail": False}

    def read() -> dict[tuple[str, ...], float]:
        if state["fail"]:
            raise RuntimeError("store down")
        return {(): 1.0}

    metrics.computed("minicloud_flaky", "Flaky.", [], read)
    metrics.gauge("minicloud_steady", "Steady.").set(5)
    await metrics.render()
    state["fail"] = True
    got = samples((await metrics.render()).decode())
    assert got[("minicloud_flaky", ())] == 1 and got[("minicloud_steady", ())] == 5


async def test_listener_serves_metrics_and_health() -> None:
    """The listener answers /metrics, /healthz and /readyz (503 with the reason)."""
    metrics = Metrics()
    metrics.counter("minicloud_hits", "Hits.").inc()
    reason = {"now": ""}

    async def ready() -> str:
        return reason["now"]

    server = MetricsServer(metrics, "127.0.0.1:0", ready)
    await server.start()
    base = f"http://127.0.0.1:{server.port}"
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{base}/metrics") as reply:
                assert reply.status == 200
                assert reply.headers["Content-Type"].startswith("text/plain")
                assert samples(await reply.text())[("minicloud_hits_total", ())] == 1
            async with http.get(f"{base}/healthz") as reply:
                assert reply.status == 200
            async with http.get(f"{base}/readyz") as reply:
                assert reply.status == 200
            reason["now"] = "the control-plane stream is down"
            async with http.get(f"{base}/readyz") as reply:
                assert reply.status == 503
                assert (await reply.json())["reason"] == "the control-plane stream is down"
    finally:
        await server.stop()


async def test_a_taken_address_fails_at_start_naming_it() -> None:
    """A second listener on a taken port raises OSError naming the address."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        listen = f"127.0.0.1:{holder.getsockname()[1]}"
        with pytest.raises(OSError, match=f"cannot listen on {listen} for metrics"):
            await MetricsServer(Metrics(), listen).start()
    await asyncio.sleep(0)


def test_listen_settings() -> None:
    """Empty or "off" turns the listener off; host:port and [v6]:port are split."""
    assert not enabled("") and not enabled("off") and enabled("127.0.0.1:13102")
    assert host_port("127.0.0.1:0") == ("127.0.0.1", 0)
    assert host_port("[::1]:13102") == ("::1", 13102)
    with pytest.raises(ValueError):
        host_port("localhost")
