"""Control-plane settings: loaded once by the entry point and passed down."""

from __future__ import annotations

import dataclasses
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common.metricsserver import MetricsTLS
from controlplane.loginguard import Policy
from controlplane.retention import EVENT_TYPES


@dataclass(frozen=True)
class Settings:
    """Everything the control plane can be configured with."""

    listen: str = "127.0.0.1:13100"
    data_dir: Path = Path("/var/lib/minicloud/controlplane")
    name: str = socket.gethostname()
    heartbeat_interval: float = 5.0
    # A node whose stream has been silent this long is treated as gone.
    node_timeout: float = 20.0
    # A node whose stream has been lost this long goes from reconnecting to missing.
    node_missing_after: float = 60.0
    # How long a power operation waits for its node's answer.
    command_timeout: float = 120.0
    cpu_overcommit: float = 16.0
    ram_overcommit: float = 1.5
    log_json: bool = False
    # The system namespace's "deploy" key; when empty and the namespace has no
    # key yet, one is generated and written to <data_dir>/system-key.
    system_key: str = ""
    # Lifetime of access tokens, in seconds.
    token_ttl: float = 900.0
    # Days each event type is kept (0: forever), and how often old events are pruned.
    retain_audit_days: float = 90
    retain_mutate_days: float = 90
    retain_status_days: float = 7
    retain_usage_days: float = 30
    retain_resources_days: float = 7
    retain_prune_days: float = 30
    retain_historic_days: float = 90
    event_prune_interval: float = 3600.0
    # Floating addresses and each NAT network's egress address come from here; its
    # first usable address is the egress gateway on every node's egress bridge.
    floating_netblock: str = "192.168.240.0/24"
    # A node that runs every network's services (gateway, DHCP, NAT); empty: the
    # first node that needs a network runs them.
    network_node: str = ""
    # How often the store is probed for the health service, and how long it may take.
    health_interval: float = 5.0
    health_timeout: float = 2.0
    # Failed logins (controlplane/loginguard.py): tries free in a row, then a wait that
    # doubles from login_backoff up to login_backoff_max seconds, per namespace and per
    # client address. Key checks (scrypt) run at most login_concurrency at a time, with at
    # most login_queue waiting; more are refused as UNAVAILABLE.
    login_free_failures: int = 3
    login_backoff: float = 1.0
    login_backoff_max: float = 30.0
    login_concurrency: int = 2
    login_queue: int = 64
    # Peers whose x-minicloud-client-address (the caller of the REST gateway) is believed.
    trusted_proxies: tuple[str, ...] = ("127.0.0.1", "::1")
    # Where /metrics is served (a management address; empty or "off": not served), and
    # how long the instance counts it shows may be reused before the records are read again.
    metrics_listen: str = "127.0.0.1:13102"
    metrics_instance_cache: float = 10.0
    # HTTPS for /metrics (MINICLOUD_METRICS_TLS_CERT/_KEY/_CLIENT_CA); None: plain HTTP.
    metrics_tls: MetricsTLS | None = None

    def retention_days(self) -> dict[str, float]:
        """Event type -> days its events are kept."""
        return {kind: float(getattr(self, f"retain_{kind}_days")) for kind in EVENT_TYPES}

    def login_policy(self) -> Policy:
        """The failed-login backoff these settings ask for."""
        return Policy(
            free=self.login_free_failures, base=self.login_backoff, cap=self.login_backoff_max
        )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from MINICLOUD_* environment variables over the defaults."""
        env = os.environ if env is None else env
        base = cls()
        settings = cls(
            listen=env.get("MINICLOUD_LISTEN", base.listen),
            data_dir=Path(env.get("MINICLOUD_DATA_DIR", str(base.data_dir))),
            name=env.get("MINICLOUD_NAME", base.name),
            heartbeat_interval=float(
                env.get("MINICLOUD_HEARTBEAT_INTERVAL", base.heartbeat_interval)
            ),
            node_timeout=float(env.get("MINICLOUD_NODE_TIMEOUT", base.node_timeout)),
            node_missing_after=float(
                env.get("MINICLOUD_NODE_MISSING_AFTER", base.node_missing_after)
            ),
            command_timeout=float(env.get("MINICLOUD_COMMAND_TIMEOUT", base.command_timeout)),
            cpu_overcommit=float(env.get("MINICLOUD_CPU_OVERCOMMIT", base.cpu_overcommit)),
            ram_overcommit=float(env.get("MINICLOUD_RAM_OVERCOMMIT", base.ram_overcommit)),
            log_json=env.get("MINICLOUD_LOG_JSON", "") in ("1", "true", "yes"),
            system_key=env.get("MINICLOUD_SYSTEM_KEY", base.system_key),
            token_ttl=float(env.get("MINICLOUD_TOKEN_TTL", base.token_ttl)),
            event_prune_interval=float(
                env.get("MINICLOUD_EVENT_PRUNE_INTERVAL", base.event_prune_interval)
            ),
            floating_netblock=env.get("MINICLOUD_FLOATING_NETBLOCK", base.floating_netblock),
            network_node=env.get("MINICLOUD_NETWORK_NODE", base.network_node),
            health_interval=float(env.get("MINICLOUD_HEALTH_INTERVAL", base.health_interval)),
            health_timeout=float(env.get("MINICLOUD_HEALTH_TIMEOUT", base.health_timeout)),
            login_free_failures=int(
                env.get("MINICLOUD_LOGIN_FREE_FAILURES", base.login_free_failures)
            ),
            login_backoff=float(env.get("MINICLOUD_LOGIN_BACKOFF", base.login_backoff)),
            login_backoff_max=float(env.get("MINICLOUD_LOGIN_BACKOFF_MAX", base.login_backoff_max)),
            login_concurrency=int(env.get("MINICLOUD_LOGIN_CONCURRENCY", base.login_concurrency)),
            login_queue=int(env.get("MINICLOUD_LOGIN_QUEUE", base.login_queue)),
            trusted_proxies=tuple(
                a.strip()
                for a in env.get("MINICLOUD_TRUSTED_PROXIES", ",".join(base.trusted_proxies)).split(
                    ","
                )
                if a.strip()
            ),
            metrics_listen=env.get("MINICLOUD_METRICS_LISTEN", base.metrics_listen),
            metrics_instance_cache=float(
                env.get("MINICLOUD_METRICS_INSTANCE_CACHE", base.metrics_instance_cache)
            ),
            metrics_tls=MetricsTLS.from_env(env, "MINICLOUD_METRICS"),
        )
        retention: dict[str, Any] = {
            f"retain_{kind}_days": float(env.get(f"MINICLOUD_RETAIN_{kind.upper()}_DAYS", days))
            for kind, days in base.retention_days().items()
        }
        return dataclasses.replace(settings, **retention)
