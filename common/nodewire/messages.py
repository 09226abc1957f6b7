"""What a node agent reports over its stream: registration, results, observations, events."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

# Bumped whenever the node stream changes incompatibly; a node agent of
# another wire version is refused at connect.
WIRE_VERSION = 2


@dataclass(frozen=True)
class Register:
    """How a node introduces itself: the first message on every stream."""

    name: str
    address: str
    cpus: int
    memory_mb: int
    # "kvm" or "qemu" (software emulation), or "fake".
    hypervisor: str
    agent_version: str = ""
    # The address consoles listen on, as clients reach it ("": the address).
    console_host: str = ""
    wire_version: int = WIRE_VERSION
    # What the node runs ("" when it does not know, as the fake hypervisor).
    qemu_version: str = ""
    libvirt_version: str = ""
    # Space for instance disks, in GB (0: not reported).
    disk_gb: int = 0


@dataclass(frozen=True)
class Observation:
    """What a node sees of one instance's domain."""

    instance_uuid: str
    exists: bool
    power_state: str = ""
    reason: str = ""
    console_port: int = 0
    vdi_port: int = 0
    vdi_tls_port: int = 0
    # The domain records no cluster (made by an older node agent): another cluster's
    # may share the node's name, so it is removed only if its instance is known.
    legacy: bool = False
    # The display's current password (new at every power on); never in instance views.
    vdi_password: str = field(default="", repr=False)


@dataclass(frozen=True)
class ExecResult:
    """How an agent execute ended: its exit code and (decoded) output."""

    return_code: int
    stdout: str = ""
    stderr: str = ""


@dataclass(frozen=True)
class PutResult:
    """An agent put wrote its file."""

    path: str


@dataclass(frozen=True)
class GetResult:
    """An agent get read a file: the guest's stat of it and the blob holding its content."""

    path: str
    content_blob: str
    stat: dict[str, Any] = field(default_factory=dict)


AgentResult = ExecResult | PutResult | GetResult


@dataclass(frozen=True)
class SnapshotResult:
    """One disk snapshotted: its blob and how consistent it is.

    ``consistency`` is ``frozen`` (the guest's file systems were frozen by its
    agent), ``crash-consistent`` (running, not frozen: ``note`` says why) or
    ``stopped`` (the guest was not running).
    """

    blob_uuid: str
    consistency: str
    frozen: tuple[str, ...] = ()
    note: str = ""
    size: int = 0
    # A thin snapshot's base blob (its backing file), else "".
    base_blob: str = ""
    device: str = ""


@dataclass(frozen=True)
class Result:
    """The outcome of one command."""

    command_id: str
    instance_uuid: str
    ok: bool
    error: str = ""
    # Whether trying the same command again could succeed.
    retryable: bool = False
    observation: Observation | None = None
    agent: AgentResult | None = None
    # Console commands: log bytes read, or the screenshot's blob.
    data: bytes = b""
    blob_uuid: str = ""
    # ExportDisks: one blob UUID per disk spec ("" for one not copied, a cdrom).
    blobs: tuple[str, ...] = ()
    # SnapshotDisk: the disk's snapshot.
    snapshot: SnapshotResult | None = None


@dataclass(frozen=True)
class NodeEvent:
    """Progress or a fact about one instance, for its event log."""

    instance_uuid: str
    message: str
    type: str = "status"
    timestamp: float = 0.0
    duration: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    fqdn: str = ""


@dataclass(frozen=True)
class Inventory:
    """Every domain a node has, sent after each (re)registration."""

    domains: tuple[Observation, ...]
    # UUIDs of the networks the node has anything for.
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentStatus:
    """The in-guest agent of one instance: Shaken Fist's state string and boot time."""

    instance_uuid: str
    agent_state: str
    boot_time: float = 0.0


@dataclass(frozen=True)
class ExecOutput:
    """A chunk of a running command's output ("stdout" or "stderr")."""

    command_id: str
    stream: str
    data: bytes


@dataclass(frozen=True)
class ConsoleRelay:
    """Bytes of an interactive console session (either way), or its end."""

    session_id: str
    data: bytes = b""
    close: bool = False
    error: str = ""


@dataclass(frozen=True)
class Heartbeat:
    """The node is alive."""

    seq: int
    sent_at: float = 0.0


Report = (
    Result
    | Observation
    | NodeEvent
    | Inventory
    | AgentStatus
    | ExecOutput
    | ConsoleRelay
    | Heartbeat
)
