"""Interface use cases: read, list per instance, hot plug, float and defloat.

An interface is visible to its instance's namespace (and to system). Hot
plug allocates the interface with the instance record update in one batch
(the instance lists it from then on, so a node that rebuilds the domain
builds it too), syncs the network to its carriers, then asks the instance's
node to attach it live and persistently; the interface is ``created`` when
the node confirms, ``error`` when it refuses. Floating reserves an address of
the floating pool at once and syncs the network so its services node adds
the DNAT/SNAT rules; defloating releases it.
"""

from __future__ import annotations

import asyncio
import dataclasses

import structlog

from common.nodewire.commands import AttachInterface
from controlplane import ipam, lifecycle
from controlplane.domainreq import nic_request
from controlplane.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from controlplane.model import Instance, Interface, NetworkSpec, Reservation
from controlplane.nodes import NodeRegistry
from controlplane.services.instances import InstanceService
from controlplane.services.namespaces import can_see
from controlplane.services.netsync import NetworkSync
from controlplane.services.networks import DELETED, Allocation, NetworkService
from controlplane.store.networks import FLOATING
from controlplane.store.occ import retry_on_conflict
from controlplane.store.protocol import Op
from controlplane.validation import MAX_INTERFACES, check_network, looks_like_uuid

log = structlog.get_logger(__name__)


class InterfaceService:
    """What callers can do with interfaces, within their namespace."""

    def __init__(
        self,
        instances: InstanceService,
        networks: NetworkService,
        netsync: NetworkSync,
        nodes: NodeRegistry,
        command_timeout: float,
    ) -> None:
        self.instances = instances
        self.networks = networks
        self.netsync = netsync
        self.nodes = nodes
        self.command_timeout = command_timeout

    async def get(self, namespace: str, uuid: str) -> Interface:
        """An interface by UUID, if the namespace may see it."""
        if not uuid:
            raise InvalidArgument("an interface UUID is required")
        found = await self.networks.networks.get_interface(uuid) if looks_like_uuid(uuid) else None
        if found is None or not can_see(namespace, found.namespace):
            raise NotFound(f"interface {uuid!r} not found")
        return found

    async def list_for_instance(self, namespace: str, ref: str) -> list[Interface]:
        """An instance's live interfaces, in order."""
        instance = await self.instances.get(namespace, ref)
        return await self.networks.networks.instance_interfaces(instance.uuid)

    async def attach(self, namespace: str, ref: str, spec: NetworkSpec) -> Interface:
        """Hot plug a new interface into a running instance."""
        spec = check_network(0, spec)

        async def attempt() -> tuple[Instance, Allocation]:
            instance = await self.instances.get(namespace, ref)
            if instance.state != lifecycle.CREATED:
                raise FailedPrecondition(
                    f"instance {instance.spec.name} is {instance.state}; only a created "
                    "instance can take a new interface"
                )
            if not self.nodes.connected(instance.node):
                raise Unavailable(f"node {instance.node} is not connected; try again later")
            if len(instance.interfaces) >= MAX_INTERFACES:
                raise FailedPrecondition(
                    f"instance {instance.spec.name} already has {MAX_INTERFACES} interfaces, "
                    "the most an instance may have"
                )
            order = max((n.order for n in instance.interfaces), default=-1) + 1
            alloc = await self.networks.allocate(
                instance.namespace,
                instance.uuid,
                instance.node,
                [spec],
                first_order=order,
                hostname=instance.spec.name,
            )
            new = instance.with_changes(
                interfaces=instance.interfaces + alloc.nics,
                spec=dataclasses.replace(
                    instance.spec, networks=instance.spec.networks + tuple(alloc.specs)
                ),
            )
            await self.instances.records.update_instance(instance, new, alloc.events, alloc.ops)
            return instance, alloc

        instance, alloc = await retry_on_conflict(attempt, f"instance {ref}")
        iface = alloc.interfaces[0]
        await self.netsync.sync([iface.network_uuid])
        command = AttachInterface(
            f"{instance.uuid}/attach/{iface.uuid}", instance.uuid, nic_request(iface.nic)
        )
        try:
            outcome = await asyncio.wait_for(
                self.nodes.send(instance.node, command), self.command_timeout
            )
        except TimeoutError as exc:
            raise DeadlineExceeded(
                f"node {instance.node} did not attach interface {iface.uuid} in time; it may still"
            ) from exc
        state = "created" if outcome.ok else "error"
        updated = await self.networks.update_interface(
            iface.uuid, lambda i: i.with_changes(state=state)
        )
        if not outcome.ok:
            raise FailedPrecondition(
                f"node {instance.node} could not attach the interface: {outcome.error}"
            )
        log.info("interface attached", instance=instance.uuid, interface=iface.uuid)
        return updated

    async def float(self, namespace: str, uuid: str) -> Interface:
        """Give an interface a floating address (the same one if it has one)."""
        iface = await self.get(namespace, uuid)
        if iface.state == DELETED:
            raise FailedPrecondition(f"interface {uuid} is deleted")
        if iface.floating:
            return iface
        net = await self.networks.get(namespace, iface.network_uuid)
        self.networks.check_can_float(net, iface.ipv4, f"interface {uuid}")

        async def attempt() -> Interface:
            taken = await self.networks.pool_taken()
            address = ipam.pick_address(
                self.networks.pool, taken, self.networks.rng, "floating pool"
            )

            def reserve(old: Interface, new: Interface, address: str = address) -> list[Op]:
                now = self.networks.clock()
                held = Reservation(address, "floating", "interface", old.uuid, now)
                return [self.networks.networks.reserve(FLOATING, held)]

            def assign(old: Interface, address: str = address) -> Interface:
                return old.with_changes(floating=address)

            return await self.networks.change_interface(uuid, assign, reserve)

        updated = await retry_on_conflict(attempt, "the floating pool")
        await self.networks.records.add_events(
            iface.namespace, [self.networks.event(uuid, f"floated at {updated.floating}", "audit")]
        )
        await self.netsync.sync([iface.network_uuid])
        return updated

    async def defloat(self, namespace: str, uuid: str) -> Interface:
        """Release an interface's floating address (nothing to do if it has none)."""
        iface = await self.get(namespace, uuid)
        if not iface.floating:
            return iface

        def release(old: Interface, new: Interface) -> list[Op]:
            return [self.networks.networks.release(FLOATING, old.floating)] if old.floating else []

        updated = await self.networks.update_interface(
            uuid, lambda i: i.with_changes(floating=""), release
        )
        await self.networks.records.add_events(
            iface.namespace, [self.networks.event(uuid, f"defloated {iface.floating}", "audit")]
        )
        await self.netsync.sync([iface.network_uuid])
        return updated
