"""The network-driver port: a node's share of the virtual networks.

Each virtual network (an IPv4 netblock with a VXLAN id) exists on a node as a
Linux bridge (``bridge_name``) joined to the other nodes that carry it by a
VXLAN device (one VNI per network; ``peers`` are the other nodes' underlay
addresses, flooded through static FDB entries). On the one node that hosts the
network's services (``services_here``) it also has a network namespace
holding the gateway address on a veth into the bridge, dnsmasq serving DHCP
leases for exactly the allocated MAC/IP pairs (and, with ``provide_dns``,
answering the leases' hostnames as ``NAME.dns_domain``), and, when asked, NAT out
through an egress veth into the node's egress bridge, where the namespace
holds the network's ``egress_address`` and any floating addresses (DNAT to
their inner address, SNAT back).

Semantics every implementation honours (tests/contract/test_network_contract.py):

- ``ensure`` makes the node's state match the config, whatever was there:
  calling it twice with the same config changes nothing; calling it with a
  changed config (new leases, peers, floating addresses, NAT off) converges.
- ``remove`` deletes everything ``ensure`` made for the network (bridge,
  VXLAN, namespace, veths, dnsmasq process and files, firewall rules);
  removing an absent network is a no-op.
- ``present`` lists the UUIDs of networks that have anything on this node,
  so a restarted agent can remove those the control plane no longer knows.
- ``claim`` names the cluster served: only its record's networks are listed,
  changed or removed (another cluster's, even under the same prefix, never).
- Failures raise ``NetworkError``; ``retryable`` says whether to try again.
"""

from __future__ import annotations

from typing import Protocol

from common.nodewire.network import Floating, Lease, NetworkConfig
from nodeagent.errors import NodeAgentError

__all__ = ["Floating", "Lease", "NetworkConfig", "NetworkDriver", "NetworkError"]


class NetworkError(NodeAgentError):
    """A network could not be set up or torn down."""


class NetworkDriver(Protocol):
    """Sets up and tears down this node's part of virtual networks."""

    def bridge_name(self, network_uuid: str) -> str:
        """The Linux bridge guests' interfaces on this network attach to."""
        ...

    async def ensure(self, config: NetworkConfig) -> None:
        """Make this node carry the network exactly as configured (idempotent)."""
        ...

    async def remove(self, network_uuid: str) -> None:
        """Remove everything this node has for the network (idempotent)."""
        ...

    async def present(self) -> list[str]:
        """UUIDs of the networks this node has anything for (of its cluster)."""
        ...

    def claim(self, cluster_id: str) -> None:
        """Serve cluster_id ("" = not known yet): only its networks are ours from now."""
        ...
