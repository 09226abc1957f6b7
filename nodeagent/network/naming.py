"""Names of a network's devices and namespace on a node, derived from its UUID.

Linux interface names are at most 15 characters, so each network is known by
a short stable hash of its UUID: with the default prefix ``mc`` a network has
the bridge ``mcb-<8 hex>``, the VXLAN device ``mcv-<8 hex>``, the namespace
``mcn-<8 hex>`` and, in the root namespace, the veth ends ``mcg-<8 hex>``
(into the network's bridge) and ``mce-<8 hex>`` (into the egress bridge).
Inside the namespace the veths are always ``gw0`` and ``eg0``. Two simulated
nodes on one machine use different prefixes so their names never collide.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from nodeagent.network.protocol import NetworkError

# Kinds of names: bridge, vxlan, gateway veth, egress veth, namespace.
KINDS = "bvgen"
PREFIX_PATTERN = re.compile(r"^[a-z][a-z0-9]{0,3}$")
# Where the namespace's veths end up, inside it.
GATEWAY_INNER = "gw0"
EGRESS_INNER = "eg0"
# Links and namespaces carry the network's UUID in an alias (ip link ... alias).
ALIAS_PREFIX = "minicloud-network:"


def short_hash(network_uuid: str) -> str:
    """Eight hex digits standing for the network in device names."""
    return hashlib.sha256(network_uuid.encode()).hexdigest()[:8]


def check_prefix(prefix: str) -> str:
    """The prefix itself, or NetworkError when it would make bad interface names."""
    if not PREFIX_PATTERN.match(prefix):
        raise NetworkError(f"network name prefix {prefix!r} must be 1-4 of [a-z0-9]")
    return prefix


def name_pattern(prefix: str) -> re.Pattern[str]:
    """Matches every name made with this prefix; group 1 is the kind, 2 the hash."""
    return re.compile(rf"^{re.escape(prefix)}([{KINDS}])-([0-9a-f]{{8}})$")


@dataclass(frozen=True)
class Names:
    """Every name one network has on a node."""

    bridge: str
    vxlan: str
    gateway_veth: str
    egress_veth: str
    netns: str

    @classmethod
    def of(cls, prefix: str, network_uuid: str) -> Names:
        """The names for a network under a prefix."""
        digest = short_hash(network_uuid)
        return cls(
            bridge=f"{prefix}b-{digest}",
            vxlan=f"{prefix}v-{digest}",
            gateway_veth=f"{prefix}g-{digest}",
            egress_veth=f"{prefix}e-{digest}",
            netns=f"{prefix}n-{digest}",
        )

    @property
    def root_links(self) -> tuple[str, ...]:
        """The links this network may have in the node's own namespace."""
        return (self.gateway_veth, self.egress_veth, self.vxlan, self.bridge)
