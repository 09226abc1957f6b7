"""Network use cases: create, read, list, delete, addresses, events; interface allocation.

IPAM lives here (rules in ``controlplane.ipam``): a network reserves its
network, gateway and broadcast addresses (and, with NAT, an egress address
from the floating pool) when it is created; an interface claims its address,
its MAC and, when floated, a floating address. Every claim is a key written
with expect=0 in the same batch as the record that holds it (see
``controlplane.store.networks``), together with a compare-and-set on the
network record, so a refused or racing request allocates nothing and a
network cannot be deleted under a new interface.

Deleting a network is refused while live instances have interfaces on it;
``clean`` first releases the interfaces of instances that are being deleted.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import random
import uuid as uuidlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import structlog

from controlplane import ipam
from controlplane.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
)
from controlplane.model import (
    Event,
    Instance,
    Interface,
    JsonDict,
    Network,
    NetworkSpec,
    Nic,
    Reservation,
)
from controlplane.services.events import read_events
from controlplane.services.namespaces import SYSTEM, can_see
from controlplane.store.networks import FLOATING, NetworkRecords
from controlplane.store.occ import retry_on_conflict
from controlplane.store.protocol import MAX_BATCH, Conflict, Op
from controlplane.store.records import Records
from controlplane.validation import NAME_RE, check_metadata_size, is_dns_name, looks_like_uuid

log = structlog.get_logger(__name__)

CREATED = "created"
DELETED = "deleted"
# Instance states whose interfaces a network delete with clean may release.
GOING = ("delete-wait", "deleted")
# Room kept in a network's delete batch for the network itself, its name, VXLAN id,
# reserved addresses and egress address.
RESERVED_OPS = 16


@dataclass
class Allocation:
    """Interfaces for an instance: their records, the batch that claims them, their events."""

    interfaces: list[Interface] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    events: list[Event] = field(default_factory=list)
    # The specs with network names resolved to UUIDs and defaults applied.
    specs: list[NetworkSpec] = field(default_factory=list)

    # network uuid -> (DNS server, DNS domain) of the networks that provide DNS.
    dns: dict[str, tuple[str, str]] = field(default_factory=dict)

    @property
    def nics(self) -> tuple[Nic, ...]:
        """The interfaces as the instance record holds them (with their network's DNS)."""
        nics = []
        for iface in self.interfaces:
            server, domain = self.dns.get(iface.network_uuid, ("", ""))
            nics.append(dataclasses.replace(iface.nic, dns_server=server, dns_domain=domain))
        return tuple(nics)

    @property
    def network_uuids(self) -> list[str]:
        return list(dict.fromkeys(i.network_uuid for i in self.interfaces))


class NetworkService:
    """What callers can do with networks, within their namespace."""

    def __init__(
        self,
        records: Records,
        networks: NetworkRecords,
        event: Callable[..., Event],
        clock: Callable[[], float],
        floating_netblock: str,
        network_node: str = "",
        rng: random.Random | None = None,
        dns_zone: str = "minicloud",
        dns_upstream: tuple[str, ...] = (),
    ) -> None:
        self.records = records
        self.networks = networks
        self.event = event
        self.clock = clock
        self.pool = ipam.parse_netblock(floating_netblock)
        self.network_node = network_node
        self.rng = rng or random.SystemRandom()
        self.dns_zone = dns_zone
        self.dns_upstream = dns_upstream

    def dns_domain(self, network: Network) -> str:
        """Where a network's names live: NAMESPACE.ZONE (empty without DNS)."""
        return f"{network.namespace}.{self.dns_zone}".lower() if network.provide_dns else ""

    # Reading -------------------------------------------------------------------

    async def get(self, namespace: str, ref: str) -> Network:
        """A network by UUID (deleted ones too) or by live name, in the namespace."""
        if not ref:
            raise InvalidArgument("a network UUID or name is required")
        if ref == FLOATING:
            raise NotFound("the floating pool is not a network you can use directly")
        found = await self.networks.get_network(ref) if looks_like_uuid(ref) else None
        if found is None:
            found = await self.networks.find_network(namespace, ref)
        if found is None and namespace == SYSTEM:
            matches = [
                n
                for n in await self.networks.list_networks()
                if n.name == ref and n.state != DELETED
            ]
            if len(matches) > 1:
                raise InvalidArgument(f"several networks are named {ref!r}; use a UUID")
            found = matches[0] if matches else None
        if found is None or not can_see(namespace, found.namespace):
            raise NotFound(f"network {ref!r} not found")
        return found

    async def list_all(self, namespace: str, include_deleted: bool = False) -> list[Network]:
        """The namespace's networks (every namespace's for system), oldest first."""
        found = [
            n
            for n in await self.networks.list_networks()
            if can_see(namespace, n.namespace) and (include_deleted or n.state != DELETED)
        ]
        return sorted(found, key=lambda n: n.created_at)

    async def addresses(self, namespace: str, ref: str) -> list[Reservation]:
        """Who holds which address of a network, in address order."""
        net = await self.get(namespace, ref)
        found = await self.networks.reservations(net.uuid)
        if net.egress_address:
            found.append(
                Reservation(
                    net.egress_address, "egress", "network", net.uuid, net.created_at, "NAT source"
                )
            )
        return sorted(found, key=lambda r: ipaddress.IPv4Address(r.address))

    async def interfaces(self, namespace: str, ref: str) -> list[Interface]:
        """The live interfaces on a network."""
        net = await self.get(namespace, ref)
        return await self.networks.network_interfaces(net.uuid)

    async def events(
        self, namespace: str, ref: str, event_type: str = "", limit: int = 100
    ) -> list[Event]:
        """A network's events, newest first."""
        net = await self.get(namespace, ref)
        return await read_events(self.records, net.uuid, event_type, limit)

    # Create and delete ---------------------------------------------------------

    async def create(
        self,
        namespace: str,
        name: str,
        netblock: str,
        provide_dhcp: bool = True,
        provide_nat: bool = True,
        metadata: JsonDict | None = None,
        provide_dns: bool = False,
    ) -> Network:
        """Check and record a network, reserving its special addresses (and egress)."""
        if not NAME_RE.match(name):
            raise InvalidArgument(
                f"network name {name!r} must be 1-63 letters, digits, '.', '_' or '-'"
            )
        if looks_like_uuid(name) or name == FLOATING:
            raise InvalidArgument(f"a network may not be named {name!r}")
        if provide_dns and not is_dns_name(f"{namespace}.{self.dns_zone}"):
            raise InvalidArgument(
                f"namespace {namespace!r} cannot be part of a DNS name "
                "(letters, digits and '-' only), so its networks cannot provide DNS"
            )
        net = ipam.parse_netblock(netblock)
        metadata = check_metadata_size(dict(metadata or {}))
        if await self.networks.find_network(namespace, name) is not None:
            raise AlreadyExists(f"a network named {name!r} already exists in {namespace}")

        async def attempt() -> Network:
            now = self.clock()
            uuid = str(uuidlib.uuid4())
            vni = ipam.random_vni(self.rng)
            if await self.networks.vni_taken(vni):
                raise Conflict(f"VXLAN id {vni} is taken")  # the commit would refuse it too
            egress = ""
            ops: list[Op] = []
            if provide_nat:
                taken = await self.pool_taken()
                egress = ipam.pick_address(self.pool, taken, self.rng, "floating pool")
                ops.append(
                    self.networks.reserve(
                        FLOATING, Reservation(egress, "egress", "network", uuid, now, name)
                    )
                )
            network = Network(
                uuid=uuid,
                namespace=namespace,
                name=name,
                netblock=str(net),
                vxlan_id=vni,
                provide_dhcp=provide_dhcp,
                provide_nat=provide_nat,
                provide_dns=provide_dns,
                state=CREATED,
                egress_address=egress,
                created_at=now,
                state_updated_at=now,
                metadata=metadata,
            )
            ops += self.networks.create_network(network)
            for address, kind in ipam.reserved(net).items():
                ops.append(self.networks.reserve(uuid, Reservation(address, kind, "", "", now)))
            events = [
                self.event(uuid, "create requested", "audit", netblock=str(net), name=name),
                self.event(
                    uuid, "state changed from initial to created", old="initial", new=CREATED
                ),
            ]
            try:
                await self.records.commit_with_events(ops, events)
            except Conflict:
                if await self.networks.find_network(namespace, name) is not None:
                    raise AlreadyExists(
                        f"a network named {name!r} already exists in {namespace}"
                    ) from None
                raise
            log.info("network created", uuid=uuid, name=name, netblock=str(net), vni=vni)
            return network.with_changes(version=1)

        return await retry_on_conflict(attempt, f"the address space of network {name}")

    async def pool_taken(self) -> set[str]:
        """Floating pool addresses nobody may take: reserved ones and those held."""
        taken = await self.networks.taken(FLOATING)
        return taken | set(ipam.reserved(self.pool))

    async def delete(self, namespace: str, ref: str, clean: bool = False) -> tuple[Network, bool]:
        """Delete a network unless live instances use it; returns it and whether it changed."""
        if ref == FLOATING:
            raise FailedPrecondition("you cannot delete the floating network")

        async def attempt() -> tuple[Network, bool]:
            net = await self.get(namespace, ref)
            if net.state == DELETED:
                return net, False
            ops: list[Op] = []
            events: list[Event] = []
            busy: list[str] = []
            # Each released interface's batch and events, committed with the network's
            # deletion when everything fits one batch, else one interface at a time first.
            releases: list[tuple[list[Op], list[Event]]] = []
            for iface in await self.networks.network_interfaces(net.uuid):
                inst = await self.records.get_instance(iface.instance_uuid)
                state = inst.state if inst is not None else DELETED
                if clean and state in GOING:
                    released: list[Event] = []
                    releases.append((self.release_interface_ops(iface, released), released))
                else:
                    busy.append(inst.spec.name if inst is not None else iface.instance_uuid)
            if busy:
                hint = "" if clean else " (use clean to release instances being deleted)"
                raise FailedPrecondition(
                    f"network {net.name} is in use by instances: {', '.join(sorted(busy))}{hint}"
                )
            if sum(len(batch) for batch, _ in releases) + RESERVED_OPS <= MAX_BATCH:
                for batch, released in releases:
                    ops += batch
                    events += released
            else:
                for batch, released in releases:
                    await self.records.commit_with_events(batch, released)
            now = self.clock()
            deleted = net.with_changes(state=DELETED, state_updated_at=now)
            ops += self.networks.update_network(net, deleted)
            for reservation in await self.networks.reservations(net.uuid):
                if reservation.user_type != "interface":
                    ops.append(self.networks.release(net.uuid, reservation.address))
            if net.egress_address:
                ops.append(self.networks.release(FLOATING, net.egress_address))
            events += [
                self.event(net.uuid, "delete requested", "audit"),
                self.event(
                    net.uuid,
                    f"state changed from {net.state} to deleted",
                    old=net.state,
                    new=DELETED,
                ),
            ]
            await self.records.commit_with_events(ops, events)
            log.info("network deleted", uuid=net.uuid, name=net.name)
            return deleted.with_changes(version=net.version + 1), True

        return await retry_on_conflict(attempt, f"network {ref}")

    # Interfaces ----------------------------------------------------------------

    async def allocate(
        self,
        namespace: str,
        instance_uuid: str,
        node: str,
        specs: Sequence[NetworkSpec],
        first_order: int = 0,
        hostname: str = "",
    ) -> Allocation:
        """Interfaces for these specs, with the batch that claims them (nothing stored yet).

        Refuses (with nothing allocated) an unknown or deleted network, an
        address outside the netblock or already taken, a MAC in use, and a
        float on a network without NAT. The batch holds a compare-and-set on
        each network record, so committing it fails with Conflict if anything
        changed meanwhile; callers allocate again. ``hostname`` (the
        instance's name) is each interface's DHCP hostname and DNS name.
        """
        alloc = Allocation()
        now = self.clock()
        networks: dict[str, Network] = {}
        taken: dict[str, set[str]] = {}
        macs: set[str] = set()
        floating_taken: set[str] | None = None
        for index, spec in enumerate(specs):
            what = f"network {index}"
            if not spec.network_uuid:
                raise InvalidArgument(f"{what}: network_uuid (a network UUID or name) is required")
            try:
                net = await self.get(namespace, spec.network_uuid)
            except NotFound:
                raise NotFound(f"{what}: network {spec.network_uuid!r} not found") from None
            if net.state != CREATED:
                raise FailedPrecondition(f"{what}: network {net.name} is {net.state}")
            networks.setdefault(net.uuid, net)
            block = ipam.parse_netblock(net.netblock)
            if net.provide_dns:
                alloc.dns[net.uuid] = (ipam.gateway(block), self.dns_domain(net))
            if net.uuid not in taken:
                taken[net.uuid] = await self.networks.taken(net.uuid)
            ipv4 = ""
            if spec.address.lower() == "none":
                pass
            elif spec.address:
                ipv4 = ipam.check_address(block, spec.address)
                if ipv4 in taken[net.uuid]:
                    raise AlreadyExists(f"{what}: address {ipv4} in use on network {net.name}")
            else:
                ipv4 = ipam.pick_address(block, taken[net.uuid], self.rng, f"network {net.name}")
            if ipv4:
                taken[net.uuid].add(ipv4)
            if spec.macaddress:
                mac = ipam.check_mac(spec.macaddress)
                if mac in macs or await self.networks.mac_taken(mac):
                    raise AlreadyExists(f"{what}: MAC address {mac} in use")
            else:
                mac = ipam.random_mac(self.rng)
                while mac in macs or await self.networks.mac_taken(mac):
                    mac = ipam.random_mac(self.rng)
            macs.add(mac)
            floating = ""
            if spec.float:
                self.check_can_float(net, ipv4, what)
                if floating_taken is None:
                    floating_taken = await self.pool_taken()
                floating = ipam.pick_address(self.pool, floating_taken, self.rng, "floating pool")
                floating_taken.add(floating)
            iface = Interface(
                uuid=str(uuidlib.uuid4()),
                namespace=namespace,
                instance_uuid=instance_uuid,
                network_uuid=net.uuid,
                macaddr=mac,
                ipv4=ipv4,
                order=first_order + index,
                model=spec.model or "virtio",
                node=node,
                floating=floating,
                hostname=hostname,
                state="initial",
                created_at=now,
                state_updated_at=now,
            )
            alloc.interfaces.append(iface)
            alloc.specs.append(NetworkSpec(net.uuid, mac, spec.address, iface.model, spec.float))
            alloc.ops += self.networks.create_interface(iface)
            if ipv4:
                alloc.ops.append(
                    self.networks.reserve(
                        net.uuid, Reservation(ipv4, "instance", "interface", iface.uuid, now)
                    )
                )
            if floating:
                alloc.ops.append(
                    self.networks.reserve(
                        FLOATING, Reservation(floating, "floating", "interface", iface.uuid, now)
                    )
                )
            alloc.events += [
                self.event(
                    instance_uuid,
                    f"interface {iface.order} allocated on network {net.name}",
                    interface=iface.uuid,
                    network=net.uuid,
                    ipv4=ipv4,
                    macaddr=mac,
                ),
                self.event(
                    iface.uuid, "interface allocated", "audit", instance=instance_uuid, ipv4=ipv4
                ),
                self.event(
                    net.uuid, "interface allocated", interface=iface.uuid, ipv4=ipv4, node=node
                ),
            ]
        for net in networks.values():
            services = net.services_node or self.network_node or node
            alloc.ops += self.networks.update_network(net, net.with_changes(services_node=services))
        return alloc

    def check_can_float(self, net: Network, ipv4: str, what: str) -> None:
        """Refuse floating an interface that cannot be reached through NAT."""
        if not net.provide_nat or not net.egress_address:
            raise FailedPrecondition(
                f"{what}: network {net.name} has no NAT; floating addresses need provide_nat"
            )
        if not ipv4:
            raise FailedPrecondition(f"{what}: an interface without an address cannot float")

    def release_interface_ops(self, iface: Interface, events: list[Event]) -> list[Op]:
        """The batch that deletes an interface and frees everything it holds."""
        now = self.clock()
        deleted = iface.with_changes(state=DELETED, state_updated_at=now)
        events.append(
            self.event(
                iface.uuid,
                f"state changed from {iface.state} to deleted",
                old=iface.state,
                new=DELETED,
            )
        )
        events.append(
            self.event(
                iface.network_uuid, "interface released", interface=iface.uuid, ipv4=iface.ipv4
            )
        )
        return self.networks.delete_interface(iface, deleted)

    async def release_ops(self, instance: Instance) -> tuple[list[Op], list[Event]]:
        """The batch that releases an instance's interfaces (committed with its deletion)."""
        ops: list[Op] = []
        events: list[Event] = []
        for iface in await self.networks.instance_interfaces(instance.uuid):
            ops += self.release_interface_ops(iface, events)
        return ops, events

    async def set_interface_states(self, instance: Instance, state: str) -> None:
        """Move an instance's interfaces still in ``initial`` to state (created or error)."""
        for iface in await self.networks.instance_interfaces(instance.uuid):
            if iface.state != "initial":
                continue
            await self.update_interface(iface.uuid, lambda i: i.with_changes(state=state))

    async def update_interface(
        self,
        uuid: str,
        change: Callable[[Interface], Interface],
        extra: Callable[[Interface, Interface], list[Op]] | None = None,
    ) -> Interface:
        """Apply change to an interface with compare-and-set (and any extra ops), with events."""
        return await retry_on_conflict(
            lambda: self.change_interface(uuid, change, extra), f"interface {uuid}"
        )

    async def change_interface(
        self,
        uuid: str,
        change: Callable[[Interface], Interface],
        extra: Callable[[Interface, Interface], list[Op]] | None = None,
    ) -> Interface:
        """One try of update_interface (Conflict if the interface or a claim changed)."""
        current = await self.networks.get_interface(uuid)
        if current is None:
            raise NotFound(f"interface {uuid} not found")
        new = change(current)
        if new == current:
            return current
        events = []
        if new.state != current.state:
            new = new.with_changes(state_updated_at=self.clock())
            events.append(
                self.event(
                    uuid,
                    f"state changed from {current.state} to {new.state}",
                    old=current.state,
                    new=new.state,
                )
            )
        ops = [self.networks.update_interface(current, new)]
        if extra is not None:
            ops += extra(current, new)
        await self.records.commit_with_events(ops, events)
        return new.with_changes(version=current.version + 1)
