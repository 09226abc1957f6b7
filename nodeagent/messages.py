"""What flows over the node stream, as plain dataclasses (the link converts)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from nodeagent.network.protocol import NetworkConfig
from nodeagent.spec import DomainSpec, NicSpec


@dataclass(frozen=True)
class Command:
    """A command from the control plane: create, power, destroy, agent, or a network one.

    Network commands (ensure-network, remove-network) carry the network's UUID
    in ``instance_uuid``, so the executor runs them one at a time per network.
    """

    command_id: str
    instance_uuid: str
    kind: str
    power_action: str = ""
    spec: DomainSpec | None = None
    # For kind "agent": kind (execute, put, get), command_line, path, mode, ...
    agent: dict[str, Any] | None = None
    # For ensure-network.
    network: NetworkConfig | None = None
    # For attach-interface.
    nic: NicSpec | None = None
    # For kind "console": kind (read, clear, screenshot, open), length, session_id.
    console: dict[str, Any] | None = None


@dataclass(frozen=True)
class Observation:
    """What this node sees of one instance's domain."""

    instance_uuid: str
    exists: bool
    power_state: str = ""
    reason: str = ""
    console_port: int = 0
    vdi_port: int = 0
    vdi_tls_port: int = 0


@dataclass(frozen=True)
class Result:
    """The outcome of one command."""

    command_id: str
    instance_uuid: str
    ok: bool
    error: str = ""
    retryable: bool = False
    observation: Observation | None = None
    agent_result: dict[str, Any] | None = None
    # Console commands: log bytes read, or the screenshot's blob.
    data: bytes = b""
    blob_uuid: str = ""


@dataclass(frozen=True)
class NodeEvent:
    """Progress or a fact about one instance, for its event log."""

    instance_uuid: str
    message: str
    type: str = "status"
    timestamp: float = 0.0
    duration: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Inventory:
    """Every domain this node has, sent after each (re)registration."""

    domains: tuple[Observation, ...]
    # UUIDs of the networks this node has anything for.
    networks: tuple[str, ...] = ()


@dataclass(frozen=True)
class AgentStatus:
    """The in-guest agent of one instance: Shaken Fist's state string and boot time."""

    instance_uuid: str
    agent_state: str
    boot_time: float = 0.0


@dataclass(frozen=True)
class ExecOutput:
    """A chunk of a running command's output."""

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


Report = Result | Observation | NodeEvent | Inventory | AgentStatus | ExecOutput | ConsoleRelay
