"""Node-agent settings: loaded once by the entry point and passed down."""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from common import addresslist, tlsfiles
from common.metricsserver import MetricsTLS
from common.tlsfiles import TLSFiles

DEFAULT_IMAGE_TEMPLATE = (
    "https://cloud.debian.org/images/cloud/{codename}/latest/"
    "debian-{version}-genericcloud-amd64.qcow2"
)


@dataclass(frozen=True)
class Settings:
    """Everything the node agent can be configured with."""

    # The control plane's node listener: HOST:PORT, or several comma-separated (the agent
    # dials the next when its stream is lost; the TLS settings apply to each).
    control_plane: str = "127.0.0.1:13100"
    # This node's certificate and key, and the cluster's CA (MINICLOUD_NODE_TLS_*): the
    # control plane's node listener (13101) knows the node by it. None: plaintext, with
    # a system key (MINICLOUD_NODE_PLAINTEXT=1).
    tls: TLSFiles | None = None
    # A key of the system namespace, traded for tokens (or read from key_file); unused
    # with TLS.
    key: str = ""
    key_file: str = ""
    name: str = socket.gethostname()
    address: str = "127.0.0.1"
    data_dir: Path = Path("/var/lib/minicloud/node")
    # "libvirt" for real guests, "fake" for simulations.
    hypervisor: str = "libvirt"
    libvirt_uri: str = "qemu:///system"
    # "auto" probes KVM; "kvm" or "qemu" (software emulation) force one.
    domain_type: str = "auto"
    # Distribution shorthands ("debian:11") are resolved through this template.
    image_url_template: str = DEFAULT_IMAGE_TEMPLATE
    # Where serial console TCP ports and VNC/SPICE servers listen.
    vdi_listen: str = "127.0.0.1"
    # Give SPICE displays a TLS port too (libvirt's qemu.conf must have spice_tls set up).
    vdi_tls: bool = False
    # Seconds between usage events (0 turns them off).
    usage_interval: float = 60.0
    # Capacity offered to the scheduler; 0 means "what the machine has".
    cpus: int = 0
    memory_mb: int = 0
    backoff_base: float = 0.5
    backoff_cap: float = 15.0
    log_json: bool = False
    # Virtual networks: this node's VXLAN underlay address (empty: ``address``),
    # the bridge egress veths join, a namespace to create VXLAN devices in (for
    # simulated nodes sharing a machine) and the prefix of device names.
    network_underlay_address: str = ""
    network_egress_bridge: str = "mcegress"
    network_underlay_netns: str = ""
    network_name_prefix: str = "mc"
    # The host-wide claims file where each cluster's node agents claim VXLAN ids, their
    # egress bridge and their floating range (nodeagent/network/claims.py).
    network_claims: Path = Path("/var/lib/minicloud/network-claims.json")
    # Where /metrics, /healthz and /readyz are served (a management address; empty or
    # "off": not served).
    metrics_listen: str = "127.0.0.1:13103"
    # HTTPS for them (MINICLOUD_NODE_METRICS_TLS_CERT/_KEY/_CLIENT_CA); None: plain.
    metrics_tls: MetricsTLS | None = None

    def node_key(self) -> str:
        """The key to authenticate with: key, else the first line of key_file."""
        if self.key or not self.key_file:
            return self.key
        return Path(self.key_file).read_text().strip()

    @property
    def instances_dir(self) -> Path:
        """Per-instance folders (disks, console log, sockets)."""
        return self.data_dir / "instances"

    @property
    def console_host(self) -> str:
        """The address console clients connect to: the listen address, unless it is a wildcard."""
        return self.address if self.vdi_listen in ("0.0.0.0", "::", "") else self.vdi_listen

    @property
    def image_cache_dir(self) -> Path:
        """Fetched base images."""
        return self.data_dir / "image-cache"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from MINICLOUD_NODE_* environment variables over the defaults."""
        env = os.environ if env is None else env
        base = cls()

        def get(name: str, default: object) -> str:
            return env.get(f"MINICLOUD_NODE_{name}", str(default))

        return cls(
            control_plane=",".join(
                addresslist.parse(
                    get("CONTROL_PLANE", base.control_plane), "MINICLOUD_NODE_CONTROL_PLANE"
                )
            ),
            key=get("KEY", base.key),
            key_file=get("KEY_FILE", base.key_file),
            name=get("NAME", base.name),
            address=get("ADDRESS", base.address),
            data_dir=Path(get("DATA_DIR", base.data_dir)),
            hypervisor=get("HYPERVISOR", base.hypervisor),
            libvirt_uri=get("LIBVIRT_URI", base.libvirt_uri),
            domain_type=get("DOMAIN_TYPE", base.domain_type),
            image_url_template=get("IMAGE_URL_TEMPLATE", base.image_url_template),
            vdi_listen=get("VDI_LISTEN", base.vdi_listen),
            vdi_tls=get("VDI_TLS", "") in ("1", "true", "yes"),
            usage_interval=float(get("USAGE_INTERVAL", base.usage_interval)),
            cpus=int(get("CPUS", base.cpus)),
            memory_mb=int(get("MEMORY_MB", base.memory_mb)),
            backoff_base=float(get("BACKOFF_BASE", base.backoff_base)),
            backoff_cap=float(get("BACKOFF_CAP", base.backoff_cap)),
            log_json=get("LOG_JSON", "") in ("1", "true", "yes"),
            network_underlay_address=get("NETWORK_UNDERLAY_ADDRESS", base.network_underlay_address),
            network_egress_bridge=get("NETWORK_EGRESS_BRIDGE", base.network_egress_bridge),
            network_underlay_netns=get("NETWORK_UNDERLAY_NETNS", base.network_underlay_netns),
            network_name_prefix=get("NETWORK_NAME_PREFIX", base.network_name_prefix),
            network_claims=Path(get("NETWORK_CLAIMS", base.network_claims)),
            metrics_listen=get("METRICS_LISTEN", base.metrics_listen),
            metrics_tls=MetricsTLS.from_env(env, "MINICLOUD_NODE_METRICS"),
            tls=tlsfiles.required(env, "MINICLOUD_NODE", "the node agent"),
        )
