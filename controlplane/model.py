"""The control plane's records: instances, events and nodes, as plain dataclasses.

Records are stored as JSON with a ``schema`` number; ``UPGRADES`` holds the
steps that bring an older stored record up to date when it is read.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

SCHEMA = 1

JsonDict = dict[str, Any]


@dataclass(frozen=True)
class DiskSpec:
    """One disk: size in GB, base image ref, bus and device type."""

    size_gb: int = 0
    base: str = ""
    bus: str = "virtio"
    type: str = "disk"


@dataclass(frozen=True)
class NetworkSpec:
    """One interface request: a network (UUID or name), address, MAC, NIC model, float."""

    network_uuid: str = ""
    macaddress: str = ""
    address: str = ""
    model: str = "virtio"
    float: bool = False


@dataclass(frozen=True)
class VideoSpec:
    """The video card model, its RAM in KiB, and the remote display protocol."""

    model: str = "cirrus"
    memory: int = 16384
    vdi: str = "spice"


@dataclass(frozen=True)
class InstanceSpec:
    """Everything a caller asked for when creating an instance."""

    name: str
    cpus: int
    memory: int
    disks: tuple[DiskSpec, ...] = ()
    networks: tuple[NetworkSpec, ...] = ()
    video: VideoSpec = field(default_factory=VideoSpec)
    ssh_key: str = ""
    user_data: str = ""
    metadata: JsonDict = field(default_factory=dict)
    side_channels: tuple[str, ...] = ()
    uefi: bool = False
    secure_boot: bool = False
    nvram_template: str = ""
    configdrive: str = "openstack-disk"


@dataclass(frozen=True)
class Nic:
    """What a node needs to build one interface of an instance."""

    uuid: str
    network_uuid: str
    macaddr: str
    ipv4: str = ""
    model: str = "virtio"
    order: int = 0
    # The network's DNS server (its gateway) and domain (NAMESPACE.ZONE) when the
    # network provides DNS, for the config drive; empty otherwise.
    dns_server: str = ""
    dns_domain: str = ""


@dataclass(frozen=True)
class Network:
    """A virtual network: an IPv4 netblock in one namespace, carried over VXLAN."""

    uuid: str
    namespace: str
    name: str
    netblock: str
    vxlan_id: int
    provide_dhcp: bool = True
    provide_nat: bool = True
    # dnsmasq answers NAME.NAMESPACE.ZONE for the instances on it.
    provide_dns: bool = False
    state: str = "initial"
    error_message: str = ""
    # The network's address in the floating pool ("" without NAT).
    egress_address: str = ""
    # The node running its namespace (gateway, DHCP, NAT); set by the first interface.
    services_node: str = ""
    created_at: float = 0.0
    state_updated_at: float = 0.0
    metadata: JsonDict = field(default_factory=dict)
    version: int = 0

    def with_changes(self, **changes: Any) -> Network:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Interface:
    """A network interface: an instance's address and MAC on one network."""

    uuid: str
    namespace: str
    instance_uuid: str
    network_uuid: str
    macaddr: str
    ipv4: str = ""
    order: int = 0
    model: str = "virtio"
    # The instance's node (where the interface lives).
    node: str = ""
    floating: str = ""
    # The instance's name: its DHCP hostname, and its DNS name on a network with DNS.
    hostname: str = ""
    state: str = "initial"
    created_at: float = 0.0
    state_updated_at: float = 0.0
    metadata: JsonDict = field(default_factory=dict)
    version: int = 0

    @property
    def nic(self) -> Nic:
        """What the node needs of it."""
        return Nic(self.uuid, self.network_uuid, self.macaddr, self.ipv4, self.model, self.order)

    def with_changes(self, **changes: Any) -> Interface:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Reservation:
    """Who holds one address of a network (or of the floating pool)."""

    address: str
    type: str
    user_type: str = ""
    user_uuid: str = ""
    when: float = 0.0
    comment: str = ""


@dataclass(frozen=True)
class Instance:
    """An instance record: its spec and everything known about it."""

    uuid: str
    namespace: str
    spec: InstanceSpec
    state: str = "initial"
    power_state: str = "initial"
    error_message: str = ""
    node: str = ""
    version: int = 0
    created_at: float = 0.0
    state_updated_at: float = 0.0
    agent_state: str = ""
    agent_system_boot_time: float = 0.0
    console_port: int = 0
    vdi_port: int = 0
    vdi_tls_port: int = 0
    # The display's password as the node last reported it: only for the VDI helper's
    # .vv file, never in an instance view (controlplane.api.convert leaves it out).
    vdi_password: str = field(default="", repr=False)
    # Sequence number of the last command sent to the node for this instance.
    command_seq: int = 0
    # The caller's metadata, mutable after create (starts as spec.metadata).
    metadata: JsonDict = field(default_factory=dict)
    # Its network interfaces in order (the node builds them; details in Interface records).
    interfaces: tuple[Nic, ...] = ()

    def with_changes(self, **changes: Any) -> Instance:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Event:
    """One entry of an object's event log."""

    object_uuid: str
    type: str
    message: str
    timestamp: float
    fqdn: str = ""
    duration: float = 0.0
    extra: JsonDict = field(default_factory=dict)


@dataclass(frozen=True)
class Node:
    """A hypervisor node: what it registered, and its state (controlplane.nodestate)."""

    name: str
    address: str
    cpus: int
    memory_mb: int
    hypervisor: str
    agent_version: str = ""
    # When its stream last carried anything (stored at connect and disconnect).
    last_seen: float = 0.0
    # Where the node's console ports listen, as clients reach it.
    console_host: str = ""
    state: str = "created"
    state_updated_at: float = 0.0
    first_seen: float = 0.0
    # When its stream was lost (0 while connected); the missing deadline counts from here.
    disconnected_at: float = 0.0
    qemu_version: str = ""
    libvirt_version: str = ""
    # Disk space for instances, in GB, if the node reports it (0: not reported).
    disk_gb: int = 0
    metadata: JsonDict = field(default_factory=dict)
    version: int = 0

    def with_changes(self, **changes: Any) -> Node:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


def node_object(name: str) -> str:
    """The object id a node's events and metadata changes are logged under."""
    return f"node:{name}"


@dataclass(frozen=True)
class AgentOperation:
    """Commands for an instance's in-guest agent, and their results, as Shaken Fist has them."""

    uuid: str
    namespace: str
    instance_uuid: str
    commands: tuple[JsonDict, ...]
    state: str = "queued"
    results: JsonDict = field(default_factory=dict)
    error_message: str = ""
    created_at: float = 0.0
    version: int = 0

    def with_changes(self, **changes: Any) -> AgentOperation:
        """A copy with some fields replaced."""
        return dataclasses.replace(self, **changes)


@dataclass(frozen=True)
class Blob:
    """Content-addressed bytes kept by the control plane."""

    uuid: str
    sha512: str
    size: int
    state: str = "created"
    reference_count: int = 0
    created_at: float = 0.0
    metadata: JsonDict = field(default_factory=dict)


@dataclass(frozen=True)
class Artifact:
    """A named, versioned reference to blobs: an upload or a label."""

    uuid: str
    namespace: str
    type: str
    name: str
    versions: tuple[JsonDict, ...] = ()
    state: str = "created"
    source_url: str = ""
    metadata: JsonDict = field(default_factory=dict)
    # The highest version index given so far (0: older records; see last_index).
    index: int = 0
    # Versions kept (0: the control plane's default).
    max_versions: int = 0
    # Shared with every namespace (system artifacts only).
    shared: bool = False
    # Why the artifact is in state "error" (its last fetch failed), else "".
    error: str = ""
    # The last fetch from a URL (services/urlcache.py): url, state (fetching, done,
    # failed), fetched and size (bytes; size 0: not announced), plane, started_at.
    fetch: JsonDict = field(default_factory=dict)

    @property
    def blob_uuid(self) -> str:
        """The newest version's blob."""
        return str(self.versions[-1]["blob_uuid"]) if self.versions else ""

    @property
    def last_index(self) -> int:
        """The highest version index given so far (the next version gets one more)."""
        return max([self.index, *(int(v["index"]) for v in self.versions)])


@dataclass(frozen=True)
class Upload:
    """Bytes being sent in chunks, before they become a blob (the size is the file's)."""

    uuid: str
    namespace: str
    node: str
    created_at: float
    state: str = "created"


def _spec_from_dict(data: JsonDict) -> InstanceSpec:
    return InstanceSpec(
        name=data["name"],
        cpus=data["cpus"],
        memory=data["memory"],
        disks=tuple(DiskSpec(**d) for d in data.get("disks", ())),
        networks=tuple(NetworkSpec(**n) for n in data.get("networks", ())),
        video=VideoSpec(**data.get("video", {})),
        ssh_key=data.get("ssh_key", ""),
        user_data=data.get("user_data", ""),
        metadata=dict(data.get("metadata", {})),
        side_channels=tuple(data.get("side_channels", ())),
        uefi=data.get("uefi", False),
        secure_boot=data.get("secure_boot", False),
        nvram_template=data.get("nvram_template", ""),
        configdrive=data.get("configdrive", "openstack-disk"),
    )


def _instance_metadata(data: JsonDict) -> JsonDict:
    """Schema 1 -> 2: instances gained a mutable ``metadata``, seeded from the spec's."""
    return {**data, "metadata": dict(data.get("spec", {}).get("metadata", {}))}


def _instance_interfaces(data: JsonDict) -> JsonDict:
    """Schema 2 -> 3: instances gained ``interfaces`` (none before networks existed)."""
    return {**data, "interfaces": []}


# Record class name -> its current schema number (SCHEMA when absent).
SCHEMAS: dict[str, int] = {"Instance": 3}
# Record class name -> {schema number -> step upgrading a stored dict from that schema
# to the next}. Each record type has its own numbering.
UPGRADES: dict[str, dict[int, Callable[[JsonDict], JsonDict]]] = {
    "Instance": {1: _instance_metadata, 2: _instance_interfaces},
}


def _upgrade(data: JsonDict, kind: str = "") -> JsonDict:
    current = SCHEMAS.get(kind, SCHEMA)
    schema = data.pop("schema", current)
    while schema < current:
        data = UPGRADES[kind][schema](data)
        schema += 1
    return data


def _plain(value: Any) -> Any:
    """Dataclasses and tuples as dicts and lists (a cheaper dataclasses.asdict)."""
    if hasattr(value, "__dataclass_fields__"):
        return {name: _plain(getattr(value, name)) for name in value.__dataclass_fields__}
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    return value


Record = (
    Instance
    | Event
    | Node
    | AgentOperation
    | Blob
    | Artifact
    | Upload
    | Network
    | Interface
    | Reservation
)


def encode(record: Record) -> bytes:
    """A record as stored JSON."""
    data = _plain(record)
    data["schema"] = SCHEMAS.get(type(record).__name__, SCHEMA)
    return json.dumps(data, separators=(",", ":")).encode()


def decode_instance(raw: bytes) -> Instance:
    """An instance record from stored JSON."""
    data = _upgrade(json.loads(raw), "Instance")
    data["spec"] = _spec_from_dict(data["spec"])
    data["interfaces"] = tuple(Nic(**n) for n in data.get("interfaces", ()))
    return Instance(**data)


def decode_event(raw: bytes) -> Event:
    """An event from stored JSON."""
    return Event(**_upgrade(json.loads(raw)))


def decode_node(raw: bytes) -> Node:
    """A node record from stored JSON."""
    return Node(**_upgrade(json.loads(raw)))


def decode_operation(raw: bytes) -> AgentOperation:
    """An agent operation from stored JSON."""
    data = _upgrade(json.loads(raw))
    data["commands"] = tuple(data["commands"])
    return AgentOperation(**data)


def decode_blob(raw: bytes) -> Blob:
    """A blob record from stored JSON."""
    return Blob(**_upgrade(json.loads(raw)))


def decode_artifact(raw: bytes) -> Artifact:
    """An artifact from stored JSON."""
    data = _upgrade(json.loads(raw))
    data["versions"] = tuple(data["versions"])
    return Artifact(**data)


def decode_network(raw: bytes) -> Network:
    """A network record from stored JSON."""
    return Network(**_upgrade(json.loads(raw)))


def decode_interface(raw: bytes) -> Interface:
    """An interface record from stored JSON."""
    return Interface(**_upgrade(json.loads(raw)))


def decode_reservation(raw: bytes) -> Reservation:
    """An address reservation from stored JSON."""
    return Reservation(**_upgrade(json.loads(raw)))


def decode_upload(raw: bytes) -> Upload:
    """An upload record from stored JSON."""
    return Upload(**_upgrade(json.loads(raw)))
