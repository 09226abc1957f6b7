"""Gateway settings: loaded once by the entry point and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common import addresslist, tlsfiles
from common.metricsserver import MetricsTLS
from common.tlsfiles import TLSFiles


@dataclass(frozen=True)
class GatewaySettings:
    """Everything the REST gateway can be configured with."""

    # host:port the HTTP server listens on.
    listen: str = "127.0.0.1:13000"
    # HTTPS: the gateway's certificate and key, and the cluster's CA it checks the
    # control plane's certificate with (MINICLOUD_GATEWAY_TLS_*). None: plain HTTP and
    # a plaintext channel to the control plane (MINICLOUD_GATEWAY_PLAINTEXT=1).
    tls: TLSFiles | None = None
    # The control plane's gRPC target: HOST:PORT, or several comma-separated (the
    # gateway moves to the next when one fails; the TLS settings apply to each).
    api: str = "127.0.0.1:13100"
    # With TLS: the gateway's own certificate and key (``minicloud-ca issue-gateway``,
    # MINICLOUD_GATEWAY_CLIENT_CERT/_KEY), with which it vouches for the callers'
    # addresses it passes on at login. Empty: the control plane ignores them.
    client_cert: str = ""
    client_key: str = ""
    # Largest JSON request body, and largest raw upload chunk, in bytes.
    max_json_bytes: int = 1024 * 1024
    max_chunk_bytes: int = 16 * 1024 * 1024
    # Deadline of each gRPC call (under the client's own 300 s timeout).
    call_timeout: float = 250.0
    # How long a bearer token the control plane called valid is taken as valid
    # before the gateway asks again (it is checked again by every call anyway).
    token_check_ttl: float = 5.0
    log_json: bool = False
    # Where /metrics is served (a management address; empty or "off": not served).
    metrics_listen: str = "127.0.0.1:13003"
    # HTTPS for /metrics (MINICLOUD_GATEWAY_METRICS_TLS_CERT/_KEY/_CLIENT_CA); None: plain.
    metrics_tls: MetricsTLS | None = None
    # The control planes' token public keys (PEM files, e.g. <data dir>/token-signing-key.pub):
    # tokens are checked here before anything else. Empty: only the control plane checks them.
    token_public_keys: tuple[Path, ...] = ()
    # Seconds a token is still taken after its expiry, or already before its issue time.
    token_clock_skew: float = 30.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewaySettings:
        """Settings from MINICLOUD_GATEWAY_* environment variables over the defaults."""
        env = os.environ if env is None else env
        base = cls()
        return cls(
            listen=env.get("MINICLOUD_GATEWAY_LISTEN", base.listen),
            api=",".join(
                addresslist.parse(
                    env.get("MINICLOUD_GATEWAY_API", base.api), "MINICLOUD_GATEWAY_API"
                )
            ),
            client_cert=env.get("MINICLOUD_GATEWAY_CLIENT_CERT", ""),
            client_key=env.get("MINICLOUD_GATEWAY_CLIENT_KEY", ""),
            max_json_bytes=int(env.get("MINICLOUD_GATEWAY_MAX_JSON_BYTES", base.max_json_bytes)),
            max_chunk_bytes=int(env.get("MINICLOUD_GATEWAY_MAX_CHUNK_BYTES", base.max_chunk_bytes)),
            call_timeout=float(env.get("MINICLOUD_GATEWAY_CALL_TIMEOUT", base.call_timeout)),
            token_check_ttl=float(
                env.get("MINICLOUD_GATEWAY_TOKEN_CHECK_TTL", base.token_check_ttl)
            ),
            log_json=env.get("MINICLOUD_LOG_JSON", "") in ("1", "true", "yes"),
            metrics_listen=env.get("MINICLOUD_GATEWAY_METRICS_LISTEN", base.metrics_listen),
            metrics_tls=MetricsTLS.from_env(env, "MINICLOUD_GATEWAY_METRICS"),
            tls=tlsfiles.required(env, "MINICLOUD_GATEWAY", "the REST gateway"),
            token_public_keys=tuple(
                Path(p.strip())
                for p in env.get("MINICLOUD_GATEWAY_TOKEN_PUBLIC_KEYS", "").split(",")
                if p.strip()
            ),
            token_clock_skew=float(
                env.get("MINICLOUD_GATEWAY_TOKEN_CLOCK_SKEW", base.token_clock_skew)
            ),
        )

    @property
    def host_port(self) -> tuple[str, int]:
        """The listen address split into host and port."""
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)
