"""Metrics over HTTPS with the cluster's certificates, when the operator asks for it."""

from __future__ import annotations

import datetime
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from common import pki
from common.metrics import Metrics
from common.metricsserver import MetricsServer, MetricsTLS

NOW = datetime.datetime.now(datetime.UTC)


@pytest.fixture(scope="module")
def ca() -> pki.KeyPair:
    return pki.create_ca("metrics-test-cluster", NOW)


def files(tmp_path: Path, ca: pki.KeyPair) -> dict[str, str]:
    """A server certificate for 127.0.0.1, its key and the CA, written as files."""
    cert = pki.issue(ca, "server", "metrics", NOW, sans=("127.0.0.1",))
    paths = {"cert": tmp_path / "m.pem", "key": tmp_path / "m.key", "ca": tmp_path / "ca.pem"}
    paths["cert"].write_bytes(cert.cert)
    paths["key"].write_bytes(cert.key)
    paths["ca"].write_bytes(ca.cert)
    return {name: str(path) for name, path in paths.items()}


async def serving(tls: MetricsTLS) -> AsyncIterator[int]:
    metrics = Metrics(process=False)
    metrics.counter("minicloud_test_total", "A test counter.").inc()
    server = MetricsServer(metrics, "127.0.0.1:0", tls=tls)
    await server.start()
    try:
        yield server.port
    finally:
        await server.stop()


def trusting(
    ca_file: str, client: pki.KeyPair | None = None, tmp: Path | None = None
) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=ca_file)
    if client is not None and tmp is not None:
        (tmp / "c.pem").write_bytes(client.cert)
        (tmp / "c.key").write_bytes(client.key)
        context.load_cert_chain(tmp / "c.pem", tmp / "c.key")
    return context


async def get(url: str, context: ssl.SSLContext | bool) -> tuple[int, str]:
    async with aiohttp.ClientSession() as session, session.get(url, ssl=context) as answer:
        return answer.status, await answer.text()


async def test_a_scraper_trusting_the_cluster_ca_reads_metrics_over_https(
    tmp_path: Path, ca: pki.KeyPair
) -> None:
    """With a certificate and key set, /metrics is HTTPS, verifiable with the CA."""
    f = files(tmp_path, ca)
    async for port in serving(MetricsTLS(f["cert"], f["key"])):
        status, body = await get(f"https://127.0.0.1:{port}/metrics", trusting(f["ca"]))
        assert status == 200 and "minicloud_test_total 1.0" in body
        with pytest.raises(aiohttp.ClientError):
            await get(f"http://127.0.0.1:{port}/metrics", False)
        with pytest.raises(aiohttp.ClientConnectorCertificateError):
            await get(f"https://127.0.0.1:{port}/metrics", ssl.create_default_context())


async def test_with_a_client_ca_only_scrapers_with_its_certificates_get_in(
    tmp_path: Path, ca: pki.KeyPair
) -> None:
    """A client CA makes the listener ask for a client certificate issued by it."""
    f = files(tmp_path, ca)
    async for port in serving(MetricsTLS(f["cert"], f["key"], client_ca=f["ca"])):
        url = f"https://127.0.0.1:{port}/metrics"
        with pytest.raises(aiohttp.ClientError):
            await get(url, trusting(f["ca"]))
        scraper = pki.issue(ca, "node", "prometheus", NOW)
        status, _ = await get(url, trusting(f["ca"], scraper, tmp_path))
        assert status == 200


def test_settings_want_both_certificate_and_key_or_neither() -> None:
    """Half a TLS setting is an error at start, not a silently plain listener."""
    assert MetricsTLS.from_env({}, "MINICLOUD_METRICS") is None
    got = MetricsTLS.from_env(
        {"MINICLOUD_METRICS_TLS_CERT": "c", "MINICLOUD_METRICS_TLS_KEY": "k"}, "MINICLOUD_METRICS"
    )
    assert got == MetricsTLS("c", "k")
    with pytest.raises(ValueError, match="go together"):
        MetricsTLS.from_env({"MINICLOUD_NODE_METRICS_TLS_CERT": "c"}, "MINICLOUD_NODE_METRICS")


async def test_unreadable_certificate_files_stop_the_listener_with_a_clear_error(
    tmp_path: Path,
) -> None:
    """A missing certificate file is an OSError naming TLS, at start."""
    server = MetricsServer(Metrics(process=False), "127.0.0.1:0", tls=MetricsTLS("/no", "/no"))
    with pytest.raises(OSError, match="over TLS"):
        await server.start()
