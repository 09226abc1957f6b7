"""What the control plane asks a node to do: a closed union of typed commands.

Every command carries its ``command_id`` (replaying one returns the first
result) and its target's UUID: the instance's, or for the network commands
the network's (so the node serialises them per network). Dispatch on
``Command`` with ``match`` and ``typing.assert_never``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from common.nodewire.domain import DiskRequest, DomainRequest, NicRequest
from common.nodewire.network import NetworkConfig
from common.nodewire.power import PowerAction

DEFAULT_AGENT_TIMEOUT = 300.0


@dataclass(frozen=True)
class CreateDomain:
    """Build the instance's disks, config drive and domain, and start it (unless not ``start``).

    ``start`` false only defines the domain, which stays off (a moved instance).
    """

    command_id: str
    instance_uuid: str
    domain: DomainRequest
    start: bool = True


@dataclass(frozen=True)
class PowerDomain:
    """A power action; for "on", ``domain`` lets the node rebuild the config drive first."""

    command_id: str
    instance_uuid: str
    action: PowerAction
    domain: DomainRequest | None = None


@dataclass(frozen=True)
class DestroyDomain:
    """Stop the domain and remove it with all its files."""

    command_id: str
    instance_uuid: str


@dataclass(frozen=True)
class AttachInterface:
    """Hot plug one interface into the instance (live and persistent)."""

    command_id: str
    instance_uuid: str
    nic: NicRequest


@dataclass(frozen=True)
class EnsureNetwork:
    """Make this node carry a network exactly as configured."""

    command_id: str
    network_uuid: str
    network: NetworkConfig


@dataclass(frozen=True)
class RemoveNetwork:
    """Remove everything this node has for a network."""

    command_id: str
    network_uuid: str


@dataclass(frozen=True)
class AgentExecute:
    """Run a command line in the guest; ``stream_output`` relays ExecOutput while it runs."""

    command_id: str
    instance_uuid: str
    command_line: str
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = ""
    timeout: float = DEFAULT_AGENT_TIMEOUT
    stream_output: bool = False


@dataclass(frozen=True)
class AgentPut:
    """Copy a blob into the guest at ``path`` with ``mode``."""

    command_id: str
    instance_uuid: str
    path: str
    blob_uuid: str
    mode: int = 0o644
    timeout: float = DEFAULT_AGENT_TIMEOUT


@dataclass(frozen=True)
class AgentGet:
    """Copy a guest file into a new blob."""

    command_id: str
    instance_uuid: str
    path: str
    timeout: float = DEFAULT_AGENT_TIMEOUT


@dataclass(frozen=True)
class ExportDisks:
    """Flatten a stopped instance's disks and upload each to the BlobService.

    ``disks`` are the instance's disk specs as stored (their order numbers
    the files); each ``disk`` becomes a standalone qcow2 blob (its overlay
    merged with its backing chain), a cdrom is not copied. The result's
    ``blobs`` holds one blob UUID per disk ("" for a cdrom).
    """

    command_id: str
    instance_uuid: str
    disks: tuple[DiskRequest, ...]


@dataclass(frozen=True)
class SnapshotDisk:
    """Snapshot one disk of the instance into a blob (the result's ``snapshot``).

    ``index`` is the disk's place in the instance's disk specs (its file),
    ``device`` the guest's name for it (vda), checked against the domain. A
    running guest is frozen through its agent for at most ``freeze_timeout``
    seconds around an external snapshot, then copied from the stable
    original while it runs on an overlay that is committed back after.
    ``thin`` uploads an overlay on the disk's base blob (``base``, a
    ``sf://blob/UUID``) instead of a standalone image.
    """

    command_id: str
    instance_uuid: str
    index: int
    device: str
    thin: bool = False
    base: str = ""
    freeze_timeout: float = 10.0
    # Whether the instance has the agent channel (without it: crash-consistent).
    agent: bool = True


class ConsoleKind(StrEnum):
    """Out-of-band access to an instance's console."""

    # The console log's tail (``length`` bytes from the end; -1: all).
    READ = "read"
    # Empty the console log.
    CLEAR = "clear"
    # A PNG of the screen, stored as a blob.
    SCREENSHOT = "screenshot"
    # Connect an interactive session: later ConsoleRelay messages carry its bytes.
    OPEN = "open"


@dataclass(frozen=True)
class ConsoleAction:
    """One console operation on an instance."""

    command_id: str
    instance_uuid: str
    kind: ConsoleKind
    # For read.
    length: int = 0
    # For open.
    session_id: str = ""


AgentCommand = AgentExecute | AgentPut | AgentGet
# Commands a node runs one at a time per target, in arrival order, remembering results.
SerialCommand = (
    CreateDomain
    | PowerDomain
    | DestroyDomain
    | AttachInterface
    | EnsureNetwork
    | RemoveNetwork
    | ExportDisks
    | SnapshotDisk
)
Command = (
    CreateDomain
    | PowerDomain
    | DestroyDomain
    | AttachInterface
    | EnsureNetwork
    | RemoveNetwork
    | ExportDisks
    | SnapshotDisk
    | AgentExecute
    | AgentPut
    | AgentGet
    | ConsoleAction
)


@dataclass(frozen=True)
class Delivery:
    """A command as sent to a node, with the id of the request it serves ("" for background work).

    The request id is not part of the command (replaying a command from another
    request is the same command); it only lets the node's logs follow the request.
    """

    command: Command
    request_id: str = ""


def target_of(command: Command) -> str:
    """The UUID a command is for: its instance's or, for network commands, its network's."""
    if isinstance(command, EnsureNetwork | RemoveNetwork):
        return command.network_uuid
    return command.instance_uuid
