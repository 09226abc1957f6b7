"""Keeps nodes' data planes in step with the networks: ensure and remove commands.

For each network, the nodes that carry it are those hosting one of its live
interfaces plus its services node (which runs the gateway, DHCP and NAT for
the whole network, so it keeps carrying the network while it exists). Each
carrier gets an ``ensure-network`` command with the whole configuration: the
leases of every interface, the other carriers' underlay addresses as peers,
and on the services node the egress and floating addresses. A node that no
longer carries a network gets ``remove-network``. Syncs of one network are
serialised so a stale configuration is never sent after a newer one.

It also follows instances through the reconciler's hooks: interfaces are
released in the batch that deletes their instance, move to ``created`` or
``error`` with it, and their networks are synced afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Iterable

import structlog

from common.nodewire.commands import Command, EnsureNetwork, RemoveNetwork
from common.nodewire.network import Floating, Lease, NetworkConfig
from controlplane import ipam, lifecycle
from controlplane.model import Event, Instance, Interface, Network
from controlplane.nodes import NodeRegistry
from controlplane.services.networks import CREATED, DELETED, NetworkService
from controlplane.store.protocol import Op
from controlplane.store.records import Records

log = structlog.get_logger(__name__)

MTU = 1450


class NetworkSync:
    """Sends each node the networks it should carry, as they change."""

    def __init__(self, service: NetworkService, records: Records, nodes: NodeRegistry) -> None:
        self.service = service
        self.networks = service.networks
        self.records = records
        self.nodes = nodes
        self._locks: dict[str, asyncio.Lock] = {}
        self._seq = itertools.count()
        self._run = time.time_ns()

    def _command_id(self, network_uuid: str) -> str:
        return f"net/{network_uuid}/{self._run}-{next(self._seq)}"

    async def _addresses(self) -> dict[str, str]:
        return {n.name: n.address for n in await self.records.list_nodes()}

    @staticmethod
    def carriers(network: Network, interfaces: Iterable[Interface]) -> set[str]:
        """The nodes that must carry a network."""
        found = {i.node for i in interfaces if i.node}
        if network.services_node:
            found.add(network.services_node)
        return found

    def config_for(
        self,
        network: Network,
        node: str,
        interfaces: list[Interface],
        carriers: set[str],
        addresses: dict[str, str],
    ) -> NetworkConfig:
        """The NetworkConfig one node gets for a network."""
        services_here = node == network.services_node
        block = ipam.parse_netblock(network.netblock)
        pool = self.service.pool
        peers = sorted(
            {addresses[n] for n in carriers if n != node and addresses.get(n)}
            - {addresses.get(node, "")}
        )
        egress = network.egress_address if services_here and network.provide_nat else ""
        return NetworkConfig(
            uuid=network.uuid,
            vni=network.vxlan_id,
            netblock=network.netblock,
            gateway=ipam.gateway(block),
            provide_dhcp=network.provide_dhcp,
            provide_nat=network.provide_nat,
            services_here=services_here,
            leases=tuple(Lease(i.macaddr, i.ipv4, i.hostname) for i in interfaces if i.ipv4),
            peers=tuple(peers),
            egress_address=f"{egress}/{pool.prefixlen}" if egress else "",
            egress_gateway=ipam.gateway(pool) if egress else "",
            floating=tuple(
                Floating(i.floating, i.ipv4) for i in interfaces if i.floating and egress
            ),
            mtu=MTU,
            provide_dns=network.provide_dns,
            dns_domain=self.service.dns_domain(network),
            dns_upstream=self.service.dns_upstream if network.provide_dns else (),
        )

    async def sync(self, network_uuids: Iterable[str], left: Iterable[str] = ()) -> None:
        """Send every carrier of these networks their config; nodes in left that no
        longer carry one get a remove."""
        left = set(left)
        for uuid in dict.fromkeys(network_uuids):
            lock = self._locks.setdefault(uuid, asyncio.Lock())
            async with lock:
                await self._sync_one(uuid, left)

    async def _sync_one(self, uuid: str, left: set[str]) -> None:
        network = await self.networks.get_network(uuid)
        if network is None:
            return
        if network.state == DELETED:
            for node in self.nodes.sessions:
                self._send(node, RemoveNetwork(self._command_id(uuid), uuid))
            return
        interfaces = await self.networks.network_interfaces(uuid)
        carriers = self.carriers(network, interfaces)
        addresses = await self._addresses()
        for node in sorted(carriers):
            config = self.config_for(network, node, interfaces, carriers, addresses)
            self._send(node, EnsureNetwork(self._command_id(uuid), uuid, config))
        for node in left - carriers:
            self._send(node, RemoveNetwork(self._command_id(uuid), uuid))

    def _send(self, node: str, command: Command) -> None:
        if self.nodes.connected(node):
            self.nodes.send(node, command)

    async def node_connected(self, node: str, present: Iterable[str]) -> None:
        """A node (re)connected: send the networks it should carry, remove the others."""
        present = set(present)
        addresses: dict[str, str] | None = None  # read only if a network needs it
        wanted: set[str] = set()
        for network in await self.networks.list_networks():
            if network.state != CREATED:
                continue
            lock = self._locks.setdefault(network.uuid, asyncio.Lock())
            async with lock:
                interfaces = await self.networks.network_interfaces(network.uuid)
                carriers = self.carriers(network, interfaces)
                if node not in carriers:
                    continue
                wanted.add(network.uuid)
                if addresses is None:
                    addresses = await self._addresses()
                config = self.config_for(network, node, interfaces, carriers, addresses)
                self._send(
                    node,
                    EnsureNetwork(self._command_id(network.uuid), network.uuid, config),
                )
        for uuid in present - wanted:
            log.info("removing a network the node should not carry", node=node, network=uuid)
            self._send(node, RemoveNetwork(self._command_id(uuid), uuid))

    # Reconciler hooks --------------------------------------------------------------

    async def release_ops(self, instance: Instance) -> tuple[list[Op], list[Event]]:
        """Ops and events releasing a deleted instance's interfaces (same batch)."""
        if not instance.interfaces:
            return [], []
        return await self.service.release_ops(instance)

    async def instance_changed(self, old: Instance, new: Instance) -> None:
        """After a committed transition: interface states follow, networks are synced."""
        if not new.interfaces or old.state == new.state:
            return
        try:
            if new.state == lifecycle.CREATED:
                await self.service.set_interface_states(new, "created")
            elif new.state == lifecycle.ERROR:
                await self.service.set_interface_states(new, "error")
            elif new.state == lifecycle.DELETED:
                await self.sync({n.network_uuid for n in new.interfaces}, left={old.node})
        except Exception:
            log.exception("cannot follow instance change on its networks", uuid=new.uuid)
