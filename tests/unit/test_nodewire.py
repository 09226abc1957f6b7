"""The node wire's converters: every message and command survives protobuf unchanged."""

from __future__ import annotations

from typing import Any

import pytest

from common.nodewire import convert
from common.nodewire.commands import (
    AgentExecute,
    AgentGet,
    AgentPut,
    AttachInterface,
    Command,
    ConsoleAction,
    ConsoleKind,
    CreateDomain,
    Delivery,
    DestroyDomain,
    EnsureNetwork,
    ExportDisks,
    PowerDomain,
    RemoveNetwork,
    SnapshotDisk,
)
from common.nodewire.domain import (
    DiskRequest,
    DomainRequest,
    NetworkRequest,
    NicRequest,
    VideoRequest,
)
from common.nodewire.messages import (
    AgentStatus,
    ConsoleRelay,
    ExecOutput,
    ExecResult,
    GetResult,
    Heartbeat,
    Inventory,
    NodeEvent,
    Observation,
    PutResult,
    Register,
    Report,
    Result,
)
from common.nodewire.network import Floating, Lease, NetworkConfig
from common.nodewire.power import PowerAction
from protos import node_pb2

UUID = "6f1c1a52-8e0c-4c35-9d43-2f6d1b7c0a11"
NET = "0b8f5c1e-2f1d-4a39-9e55-6a3c0d1e2f30"
NIC = NicRequest("nic-1", NET, "02:00:00:ea:3a:28", "10.0.0.5", "e1000", 1)
DOMAIN = DomainRequest(
    uuid=UUID,
    name="web-1",
    namespace="team-a",
    cpus=2,
    memory_mb=2048,
    disks=(DiskRequest(8, "debian:12"), DiskRequest(0, "/iso", "ide", "cdrom")),
    video=VideoRequest("virtio", 32768, "vnc"),
    side_channels=("sf-agent",),
    networks=(
        NetworkRequest(
            NET, "02:00:00:ea:3a:28", "10.0.0.5/24", "e1000", ("10.0.0.1",), "team-a.minicloud"
        ),
    ),
    ssh_key="ssh-ed25519 AAAA test",
    user_data="aGVsbG8=",
    metadata={"count": 3, "ratio": 0.5, "tags": ["a", 1], "nested": {"n": 2}},
    uefi=True,
    secure_boot=True,
    interfaces=(NIC,),
    nvram_template="sf://blob/abc",
    configdrive="none",
)
NETWORK = NetworkConfig(
    uuid=NET,
    vni=42,
    netblock="10.0.0.0/24",
    gateway="10.0.0.1",
    provide_dhcp=False,
    provide_nat=True,
    services_here=False,
    leases=(Lease("02:00:00:ea:3a:28", "10.0.0.5", "web-1"),),
    peers=("192.168.1.2",),
    egress_address="192.168.240.5/24",
    egress_gateway="192.168.240.1",
    floating=(Floating("192.168.240.9", "10.0.0.5"),),
    mtu=1400,
    provide_dns=True,
    dns_domain="team-a.minicloud",
    dns_upstream=("192.0.2.53", "198.51.100.53"),
)

COMMANDS: list[Command] = [
    CreateDomain("c1", UUID, DOMAIN),
    CreateDomain("c1s", UUID, DOMAIN, start=False),
    PowerDomain("c2", UUID, PowerAction.ON, DOMAIN),
    PowerDomain("c3", UUID, PowerAction.SOFT_REBOOT),
    DestroyDomain("c4", UUID),
    AttachInterface("c5", UUID, NIC),
    EnsureNetwork("c6", NET, NETWORK),
    RemoveNetwork("c7", NET),
    AgentExecute("c8", UUID, "echo hi", {"A": "1"}, "/tmp", 12.5, True),
    AgentPut("c9", UUID, "/etc/motd", "blob-1", 0o600, 30.0),
    AgentGet("c10", UUID, "/etc/hostname", 20.0),
    ConsoleAction("c11", UUID, ConsoleKind.READ, length=-1),
    ConsoleAction("c12", UUID, ConsoleKind.CLEAR),
    ConsoleAction("c13", UUID, ConsoleKind.SCREENSHOT),
    ConsoleAction("c14", UUID, ConsoleKind.OPEN, session_id="s1"),
    ExportDisks(
        "c15", UUID, (DiskRequest(8, "debian:12"), DiskRequest(0, "/iso", "sata", "cdrom"))
    ),
    SnapshotDisk("c16", UUID, 1, "vdc", True, "sf://blob/b", 5.0, False),
]

OBSERVATION = Observation(UUID, True, "on", "booted", 5900, 5901, 5902, vdi_password="s3cretPw")
LEGACY = Observation(UUID, True, "off", "", legacy=True)
REPORTS: list[Report] = [
    OBSERVATION,
    Observation(UUID, False),
    LEGACY,
    Result("c1", UUID, True, observation=OBSERVATION),
    Result("c2", UUID, False, "no space", True),
    Result("c8", UUID, True, agent=ExecResult(3, "out", "err")),
    Result("c9", UUID, True, agent=PutResult("/etc/motd")),
    Result("c10", UUID, True, agent=GetResult("/etc/hostname", "blob-2", {"size": 5})),
    Result("c11", UUID, True, data=b"console bytes"),
    Result("c13", UUID, True, blob_uuid="blob-3"),
    Result("c15", UUID, True, blobs=("blob-4", "")),
    NodeEvent(UUID, "disks ready", "status", 10.0, 1.5, {"disks": 2}, "node-1"),
    Inventory((OBSERVATION, Observation("other", True, "off")), (NET,)),
    AgentStatus(UUID, "ready", 1700000000.0),
    ExecOutput("c8", "stderr", b"\x00\xff"),
    ConsoleRelay("s1", b"keys"),
    ConsoleRelay("s1", close=True, error="gone"),
    Heartbeat(7, 12.25),
]


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: type(c).__name__)
def test_command_round_trip(command: Command) -> None:
    """A command converted to protobuf and back is the same command."""
    wire = node_pb2.Command.FromString(convert.command_to_pb(command).SerializeToString())
    assert convert.command_from_pb(wire) == command


def test_every_command_type_has_a_round_trip() -> None:
    """The round trips above cover each member of the Command union."""
    assert {type(c) for c in COMMANDS} == set(Command.__args__)


@pytest.mark.parametrize("report", REPORTS, ids=lambda r: type(r).__name__)
def test_report_round_trip(report: Report) -> None:
    """A report converted to protobuf and back is the same report."""
    wire = node_pb2.NodeMessage.FromString(convert.report_to_pb(report).SerializeToString())
    assert convert.report_from_pb(wire) == report


def test_register_round_trip() -> None:
    """A registration keeps every field, its wire version included."""
    reg = Register("node-1", "10.1.0.2", 8, 16384, "kvm", "0.1.0", "198.51.100.7", 7)
    wire = node_pb2.Register.FromString(convert.register_to_pb(reg).SerializeToString())
    assert convert.register_from_pb(wire) == reg


@pytest.mark.parametrize("request_id", ["req-1", ""])
def test_a_delivery_keeps_its_command_and_request_id(request_id: str) -> None:
    """A command sent for a request arrives with that request's id (or none)."""
    delivery = Delivery(COMMANDS[0], request_id)
    message = node_pb2.ControlMessage.FromString(
        convert.control_to_pb(delivery).SerializeToString()
    )
    assert convert.delivery_from_pb(message.command) == delivery


def test_relay_is_sent_as_a_control_message() -> None:
    """Console bytes for a node travel as the control message's console field."""
    relay = ConsoleRelay("s1", b"ls\n")
    message = convert.control_to_pb(relay)
    assert convert.relay_from_pb(message.console) == relay


def test_unknown_command_is_a_wire_error() -> None:
    """A command with no action set cannot be read."""
    with pytest.raises(convert.WireError):
        convert.command_from_pb(node_pb2.Command(command_id="x", instance_uuid=UUID))


def test_unknown_power_action_is_a_wire_error() -> None:
    """A power command naming an action outside the table cannot be read."""
    pb = node_pb2.Command(command_id="x", instance_uuid=UUID)
    pb.power.action = "explode"
    with pytest.raises(convert.WireError, match="explode"):
        convert.command_from_pb(pb)


@pytest.mark.parametrize(
    ("metadata", "expected"),
    [
        ({"count": 3}, {"count": 3}),
        ({"ratio": 0.5}, {"ratio": 0.5}),
        ({"deep": {"list": [1, 2.0, 2.5]}}, {"deep": {"list": [1, 2, 2.5]}}),
    ],
)
def test_whole_number_metadata_arrives_as_ints(
    metadata: dict[str, Any], expected: dict[str, Any]
) -> None:
    """Metadata numbers that are whole reach the node as ints, not floats, at any depth."""
    command = CreateDomain("c", UUID, DomainRequest(UUID, "vm", metadata=metadata))
    wire = node_pb2.Command.FromString(convert.command_to_pb(command).SerializeToString())
    received = convert.command_from_pb(wire)
    assert isinstance(received, CreateDomain)
    assert received.domain.metadata == expected
    assert [type(v) for v in received.domain.metadata.values()] == [
        type(v) for v in expected.values()
    ]
