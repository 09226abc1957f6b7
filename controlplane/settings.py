"""Control-plane settings: loaded once by the entry point and passed down."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from common import tlsfiles
from common.metricsserver import MetricsTLS
from common.tlsfiles import TLSFiles
from controlplane.loginguard import Policy
from controlplane.retention import EVENT_TYPES
from controlplane.validation import is_dns_name

STORE_KINDS = ("rocksdb", "etcd")


@dataclass(frozen=True)
class StoreLocation:
    """Where the state lives: a RocksDB directory, or etcd endpoints ("host:port")."""

    kind: str
    path: Path | None = None
    endpoints: tuple[str, ...] = ()
    tls: bool = False


def parse_store(value: str, data_dir: Path) -> StoreLocation:
    """MINICLOUD_STORE: "rocksdb:PATH" or "etcd:URL,URL,..." ("" : RocksDB under data_dir).

    An etcd URL is "http://host:port", "https://host:port" (TLS) or "host:port";
    all of them must agree on TLS. Raises ValueError saying what is wrong.
    """
    if not value:
        return StoreLocation("rocksdb", path=data_dir / "store")
    kind, _, rest = value.partition(":")
    if kind not in STORE_KINDS or not rest:
        raise ValueError(f"MINICLOUD_STORE must be rocksdb:PATH or etcd:URL,URL,..., not {value!r}")
    if kind == "rocksdb":
        return StoreLocation("rocksdb", path=Path(rest))
    endpoints: list[str] = []
    schemes: set[str] = set()
    for url in (u.strip() for u in rest.split(",")):
        scheme, sep, address = url.rpartition("://")
        if sep and scheme not in ("http", "https"):
            raise ValueError(f"etcd URL {url!r}: the scheme must be http or https")
        schemes.add(scheme or "http")
        host, _, port = address.rstrip("/").rpartition(":")
        if not host or not port.isdigit():
            raise ValueError(f"etcd URL {url!r} must name a host and port (http://host:2379)")
        endpoints.append(f"{host}:{port}")
    if len(schemes) > 1:
        raise ValueError("etcd URLs must all use http or all use https")
    return StoreLocation("etcd", endpoints=tuple(endpoints), tls=schemes == {"https"})


def paths(value: str) -> tuple[Path, ...]:
    """The paths in a comma-separated list."""
    return tuple(Path(p.strip()) for p in value.split(",") if p.strip())


def dns_zone(value: str) -> str:
    """MINICLOUD_DNS_ZONE, checked: a DNS name (ValueError otherwise)."""
    zone = value.strip().strip(".").lower()
    if not is_dns_name(zone):
        raise ValueError(f"MINICLOUD_DNS_ZONE {value!r} is not a DNS name")
    return zone


def dns_servers(value: str) -> tuple[str, ...]:
    """MINICLOUD_DNS_UPSTREAM: comma-separated IP addresses (ValueError otherwise)."""
    servers = tuple(s.strip() for s in value.split(",") if s.strip())
    for server in servers:
        try:
            ipaddress.ip_address(server)
        except ValueError:
            raise ValueError(f"MINICLOUD_DNS_UPSTREAM: {server!r} is not an IP address") from None
    return servers


def networks(value: str, name: str) -> tuple[str, ...]:
    """Comma-separated networks or addresses (CIDR), checked (ValueError naming the setting)."""
    found = []
    for item in (v.strip() for v in value.split(",")):
        if not item:
            continue
        try:
            found.append(str(ipaddress.ip_network(item, strict=False)))
        except ValueError:
            raise ValueError(f"{name}: {item!r} is not a network or address") from None
    return tuple(found)


@dataclass(frozen=True)
class Settings:
    """Everything the control plane can be configured with."""

    listen: str = "127.0.0.1:13100"
    # TLS for both listeners: the server certificate and key, and the cluster's CA that
    # node agents' client certificates must come from. None: plaintext (the public
    # listener then also serves the node stream, authenticated by a system key).
    tls: TLSFiles | None = None
    # With TLS, node agents connect here, with a node certificate, not to listen.
    node_listen: str = "127.0.0.1:13101"
    # How often revoked certificates are read from the store (open streams of a revoked
    # node are closed within this).
    revocation_interval: float = 2.0
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
    # The Ed25519 key tokens are signed with (made on first start, mode 0600; its public
    # half is written beside it as <file>.pub); empty: <data_dir>/token-signing-key.
    token_signing_key: Path | None = None
    # More public keys (PEM files) whose tokens are taken: other control planes' keys,
    # and a rotated-out key until its tokens have expired.
    token_public_keys: tuple[Path, ...] = ()
    # Seconds a token is still taken after its expiry, or already before its issue time
    # (clocks differ between machines).
    token_clock_skew: float = 30.0
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
    # Networks with provide_dns answer NAME.NAMESPACE.<dns_zone> for their instances.
    dns_zone: str = "minicloud"
    # Servers those networks forward other names to; empty: nothing is forwarded.
    dns_upstream: tuple[str, ...] = ()
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
    # Versions an artifact keeps unless set per artifact (Shaken Fist's default, 3), and
    # how often blobs released while an instance still used them are checked again.
    artifact_max_versions: int = 3
    blob_sweep_interval: float = 60.0
    # Caching artifacts from URLs (services/urlcache.py): at most this many bytes, this
    # many seconds per fetch. Loopback, link-local, private, shared and reserved addresses
    # and the cluster's own networks are refused unless in artifact_fetch_allow;
    # artifact_fetch_deny refuses more (it wins over allow).
    artifact_fetch_max_bytes: int = 16 * 1024**3
    artifact_fetch_timeout: float = 3600.0
    artifact_fetch_allow: tuple[str, ...] = ()
    artifact_fetch_deny: tuple[str, ...] = ()

    # The store (parse_store): empty for RocksDB under data_dir/store. With etcd every
    # key goes under etcd_prefix; TLS to etcd (https URLs, or any of these files set)
    # trusts etcd_ca (the system's CAs when empty) and may present etcd_cert/etcd_key.
    store: str = ""
    etcd_prefix: str = "/minicloud/"
    etcd_ca: str = ""
    etcd_cert: str = ""
    etcd_key: str = ""
    # How long one etcd call may take, in seconds.
    etcd_timeout: float = 10.0
    # The replica's lease (controlplane/replica.py), renewed every third of it: the leader
    # key goes at most this long after its replica died, and another replica leads.
    leader_ttl: float = 3.0

    def signing_key_path(self) -> Path:
        """The token signing key file."""
        return self.token_signing_key or self.data_dir / "token-signing-key"

    def store_location(self) -> StoreLocation:
        """Where the state lives (ValueError when MINICLOUD_STORE is malformed)."""
        return parse_store(self.store, self.data_dir)

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
            token_signing_key=(
                Path(env["MINICLOUD_TOKEN_SIGNING_KEY"])
                if env.get("MINICLOUD_TOKEN_SIGNING_KEY")
                else None
            ),
            token_public_keys=paths(env.get("MINICLOUD_TOKEN_PUBLIC_KEYS", "")),
            token_clock_skew=float(env.get("MINICLOUD_TOKEN_CLOCK_SKEW", base.token_clock_skew)),
            event_prune_interval=float(
                env.get("MINICLOUD_EVENT_PRUNE_INTERVAL", base.event_prune_interval)
            ),
            floating_netblock=env.get("MINICLOUD_FLOATING_NETBLOCK", base.floating_netblock),
            network_node=env.get("MINICLOUD_NETWORK_NODE", base.network_node),
            dns_zone=dns_zone(env.get("MINICLOUD_DNS_ZONE", base.dns_zone)),
            dns_upstream=dns_servers(env.get("MINICLOUD_DNS_UPSTREAM", "")),
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
            tls=tlsfiles.required(env, "MINICLOUD", "the control plane"),
            node_listen=env.get("MINICLOUD_NODE_LISTEN", base.node_listen),
            revocation_interval=float(
                env.get("MINICLOUD_REVOCATION_INTERVAL", base.revocation_interval)
            ),
            artifact_max_versions=int(
                env.get("MINICLOUD_ARTIFACT_MAX_VERSIONS", base.artifact_max_versions)
            ),
            blob_sweep_interval=float(
                env.get("MINICLOUD_BLOB_SWEEP_INTERVAL", base.blob_sweep_interval)
            ),
            artifact_fetch_max_bytes=int(
                env.get("MINICLOUD_ARTIFACT_FETCH_MAX_BYTES", base.artifact_fetch_max_bytes)
            ),
            artifact_fetch_timeout=float(
                env.get("MINICLOUD_ARTIFACT_FETCH_TIMEOUT", base.artifact_fetch_timeout)
            ),
            artifact_fetch_allow=networks(
                env.get("MINICLOUD_ARTIFACT_FETCH_ALLOW", ""), "MINICLOUD_ARTIFACT_FETCH_ALLOW"
            ),
            artifact_fetch_deny=networks(
                env.get("MINICLOUD_ARTIFACT_FETCH_DENY", ""), "MINICLOUD_ARTIFACT_FETCH_DENY"
            ),
            store=env.get("MINICLOUD_STORE", base.store),
            etcd_prefix=env.get("MINICLOUD_ETCD_PREFIX", base.etcd_prefix),
            etcd_ca=env.get("MINICLOUD_ETCD_CA", base.etcd_ca),
            etcd_cert=env.get("MINICLOUD_ETCD_CERT", base.etcd_cert),
            etcd_key=env.get("MINICLOUD_ETCD_KEY", base.etcd_key),
            etcd_timeout=float(env.get("MINICLOUD_ETCD_TIMEOUT", base.etcd_timeout)),
            leader_ttl=float(env.get("MINICLOUD_LEADER_TTL", base.leader_ttl)),
        )
        if not settings.leader_ttl > 0:
            raise ValueError(f"MINICLOUD_LEADER_TTL must be above 0, not {settings.leader_ttl}")
        settings.store_location()  # refuse a malformed MINICLOUD_STORE at load
        retention: dict[str, Any] = {
            f"retain_{kind}_days": float(env.get(f"MINICLOUD_RETAIN_{kind.upper()}_DAYS", days))
            for kind, days in base.retention_days().items()
        }
        return dataclasses.replace(settings, **retention)
