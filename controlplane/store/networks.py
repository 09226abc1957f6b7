"""Network and interface records, and the claims that keep addresses, MACs and VNIs unique.

Key layout:

    net/<uuid>                  network record (JSON)
    netname/<namespace>/<name>  -> uuid of the live network with that name
    vxlan/<vni, 8 digits>       -> uuid of the network using that VXLAN id
    addr/<net uuid>/<address>   reservation (JSON): who holds the address; the
                                floating pool uses the network uuid "floating"
    mac/<mac>                   -> uuid of the interface with that MAC (cluster-wide)
    iface/<uuid>                interface record (JSON)
    ifnet/<net uuid>/<uuid>     interface on a network (empty value)
    ifinst/<inst uuid>/<uuid>   interface of an instance (empty value)

Every claim is written with expect=0 in the same batch as the record that
needs it, so a batch either gets all its addresses, MACs and names or
nothing (``Conflict``); releasing deletes the claim keys in the batch that
marks the holder deleted. This module only reads and builds operations; the
network service commits them together with events and instance records.
"""

from __future__ import annotations

from controlplane.model import (
    Interface,
    Network,
    Reservation,
    decode_interface,
    decode_network,
    decode_reservation,
    encode,
)
from controlplane.store.protocol import Delete, Op, Put, Store

FLOATING = "floating"


def net_key(uuid: str) -> bytes:
    return f"net/{uuid}".encode()


def netname_key(namespace: str, name: str) -> bytes:
    return f"netname/{namespace}/{name}".encode()


def vxlan_key(vni: int) -> bytes:
    return f"vxlan/{vni:08d}".encode()


def addr_key(network_uuid: str, address: str) -> bytes:
    return f"addr/{network_uuid}/{address}".encode()


def mac_key(mac: str) -> bytes:
    return f"mac/{mac}".encode()


def iface_key(uuid: str) -> bytes:
    return f"iface/{uuid}".encode()


class NetworkRecords:
    """Reads networks, interfaces and reservations; builds the operations that change them."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get_network(self, uuid: str) -> Network | None:
        """A network by UUID (deleted ones too), or None."""
        item = await self.store.get(net_key(uuid))
        return (
            None if item is None else decode_network(item.value).with_changes(version=item.version)
        )

    async def find_network(self, namespace: str, name: str) -> Network | None:
        """The live network with that name in the namespace, or None."""
        item = await self.store.get(netname_key(namespace, name))
        return None if item is None else await self.get_network(item.value.decode())

    async def list_networks(self) -> list[Network]:
        """Every network record."""
        return [
            decode_network(i.value).with_changes(version=i.version)
            for i in await self.store.scan(b"net/")
        ]

    async def get_interface(self, uuid: str) -> Interface | None:
        """An interface by UUID, or None."""
        item = await self.store.get(iface_key(uuid))
        if item is None:
            return None
        return decode_interface(item.value).with_changes(version=item.version)

    async def _interfaces_under(self, prefix: str) -> list[Interface]:
        found = []
        for item in await self.store.scan(prefix.encode()):
            iface = await self.get_interface(item.key.decode().rsplit("/", 1)[1])
            if iface is not None:
                found.append(iface)
        return sorted(found, key=lambda i: (i.order, i.created_at))

    async def network_interfaces(self, network_uuid: str) -> list[Interface]:
        """The live interfaces on a network."""
        return await self._interfaces_under(f"ifnet/{network_uuid}/")

    async def instance_interfaces(self, instance_uuid: str) -> list[Interface]:
        """An instance's live interfaces, in order."""
        return await self._interfaces_under(f"ifinst/{instance_uuid}/")

    async def reservations(self, network_uuid: str) -> list[Reservation]:
        """Every reserved address of a network (or of the floating pool)."""
        return [
            decode_reservation(i.value)
            for i in await self.store.scan(f"addr/{network_uuid}/".encode())
        ]

    async def taken(self, network_uuid: str) -> set[str]:
        """The reserved addresses of a network."""
        prefix = f"addr/{network_uuid}/".encode()
        return {i.key[len(prefix) :].decode() for i in await self.store.scan(prefix)}

    async def mac_taken(self, mac: str) -> bool:
        """Whether an interface has that MAC address."""
        return await self.store.get(mac_key(mac)) is not None

    async def vni_taken(self, vni: int) -> bool:
        """Whether a network uses that VXLAN id."""
        return await self.store.get(vxlan_key(vni)) is not None

    # Operations -----------------------------------------------------------------

    @staticmethod
    def reserve(network_uuid: str, reservation: Reservation) -> Op:
        """Claim an address (Conflict if somebody holds it)."""
        return Put(addr_key(network_uuid, reservation.address), encode(reservation), expect=0)

    @staticmethod
    def release(network_uuid: str, address: str) -> Op:
        """Free an address."""
        return Delete(addr_key(network_uuid, address))

    @staticmethod
    def create_network(network: Network) -> list[Op]:
        """Store a new network, claiming its name and VXLAN id."""
        return [
            Put(net_key(network.uuid), encode(network), expect=0),
            Put(netname_key(network.namespace, network.name), network.uuid.encode(), expect=0),
            Put(vxlan_key(network.vxlan_id), network.uuid.encode(), expect=0),
        ]

    @staticmethod
    def update_network(old: Network, new: Network) -> list[Op]:
        """Replace a network if unchanged since read; deleting frees its name and VXLAN id."""
        ops: list[Op] = [Put(net_key(new.uuid), encode(new), expect=old.version)]
        if new.state == "deleted" and old.state != "deleted":
            ops += [Delete(netname_key(old.namespace, old.name)), Delete(vxlan_key(old.vxlan_id))]
        return ops

    @staticmethod
    def create_interface(iface: Interface) -> list[Op]:
        """Store a new interface, claiming its MAC and indexing it by network and instance."""
        return [
            Put(iface_key(iface.uuid), encode(iface), expect=0),
            Put(mac_key(iface.macaddr), iface.uuid.encode(), expect=0),
            Put(f"ifnet/{iface.network_uuid}/{iface.uuid}".encode(), b""),
            Put(f"ifinst/{iface.instance_uuid}/{iface.uuid}".encode(), b""),
        ]

    @staticmethod
    def update_interface(old: Interface, new: Interface) -> Op:
        """Replace an interface if unchanged since read."""
        return Put(iface_key(new.uuid), encode(new), expect=old.version)

    @staticmethod
    def delete_interface(iface: Interface, deleted: Interface) -> list[Op]:
        """Mark an interface deleted, freeing its MAC, addresses and index entries."""
        ops: list[Op] = [
            Put(iface_key(iface.uuid), encode(deleted), expect=iface.version),
            Delete(mac_key(iface.macaddr)),
            Delete(f"ifnet/{iface.network_uuid}/{iface.uuid}".encode()),
            Delete(f"ifinst/{iface.instance_uuid}/{iface.uuid}".encode()),
        ]
        if iface.ipv4:
            ops.append(Delete(addr_key(iface.network_uuid, iface.ipv4)))
        if iface.floating:
            ops.append(Delete(addr_key(FLOATING, iface.floating)))
        return ops
