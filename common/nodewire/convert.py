"""The node stream's messages to and from protobuf: the one wire module importing ``protos``.

Struct fields (metadata, event extras, stat results) come back with
whole-number floats turned into ints, on both sides, since protobuf's
Struct holds only doubles.
"""

from __future__ import annotations

from typing import Any, assert_never

from google.protobuf import json_format, struct_pb2

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
    AgentResult,
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
    SnapshotResult,
)
from common.nodewire.network import Floating, Lease, NetworkConfig
from common.nodewire.power import PowerAction
from protos import common_pb2, node_pb2


class WireError(ValueError):
    """A protobuf message that is not a valid node-stream message."""


# -- Struct values -----------------------------------------------------------


def ints(value: Any) -> Any:
    """A JSON value with whole-number floats turned into ints (protobuf has only doubles)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [ints(v) for v in value]
    return value


def struct_to_dict(value: struct_pb2.Struct) -> dict[str, Any]:
    """A Struct as a plain dict, with whole-number floats turned back into ints."""
    return ints(json_format.MessageToDict(value))  # type: ignore[no-any-return]


def dict_to_struct(value: dict[str, Any], out: struct_pb2.Struct) -> None:
    """Fill a Struct from a plain dict."""
    if value:
        out.update(value)


# -- the node's view of an instance -------------------------------------------


def nic_to_pb(nic: NicRequest, out: node_pb2.NicRequest) -> None:
    """Fill a wire interface."""
    out.uuid = nic.uuid
    out.network_uuid = nic.network_uuid
    out.mac = nic.mac
    out.ipv4 = nic.ipv4
    out.model = nic.model
    out.order = nic.order


def nic_from_pb(pb: node_pb2.NicRequest) -> NicRequest:
    """An interface from the wire (the bridge is the node's to fill in)."""
    return NicRequest(pb.uuid, pb.network_uuid, pb.mac, pb.ipv4, pb.model or "virtio", pb.order)


def domain_to_pb(domain: DomainRequest, out: node_pb2.DomainRequest) -> None:
    """Fill a wire domain request (its UUID travels as the command's)."""
    out.name = domain.name
    out.namespace = domain.namespace
    out.cpus = domain.cpus
    out.memory_mb = domain.memory_mb
    for d in domain.disks:
        out.disks.add(size_gb=d.size_gb, base=d.base, bus=d.bus, type=d.type)
    out.video.model = domain.video.model
    out.video.memory = domain.video.memory
    out.video.vdi = domain.video.vdi
    out.side_channels.extend(domain.side_channels)
    for n in domain.networks:
        out.networks.add(
            network_uuid=n.network_uuid,
            mac=n.mac,
            address=n.address,
            model=n.model,
            dns_servers=n.dns_servers,
            dns_domain=n.dns_domain,
        )
    out.ssh_key = domain.ssh_key
    out.user_data = domain.user_data
    dict_to_struct(domain.metadata, out.metadata)
    out.uefi = domain.uefi
    out.secure_boot = domain.secure_boot
    for nic in domain.interfaces:
        nic_to_pb(nic, out.interfaces.add())
    out.nvram_template = domain.nvram_template
    out.configdrive = domain.configdrive


def domain_from_pb(uuid: str, pb: node_pb2.DomainRequest) -> DomainRequest:
    """A domain request from the wire."""
    return DomainRequest(
        uuid=uuid,
        name=pb.name,
        namespace=pb.namespace or "system",
        cpus=pb.cpus,
        memory_mb=pb.memory_mb,
        disks=tuple(
            DiskRequest(d.size_gb, d.base, d.bus or "virtio", d.type or "disk") for d in pb.disks
        ),
        video=VideoRequest(
            pb.video.model or "cirrus", pb.video.memory or 16384, pb.video.vdi or "spice"
        ),
        side_channels=tuple(pb.side_channels),
        networks=tuple(
            NetworkRequest(
                n.network_uuid,
                n.mac,
                n.address,
                n.model or "virtio",
                tuple(n.dns_servers),
                n.dns_domain,
            )
            for n in pb.networks
        ),
        ssh_key=pb.ssh_key,
        user_data=pb.user_data,
        metadata=struct_to_dict(pb.metadata),
        uefi=pb.uefi,
        secure_boot=pb.secure_boot,
        interfaces=tuple(nic_from_pb(n) for n in pb.interfaces),
        nvram_template=pb.nvram_template,
        configdrive=pb.configdrive or "openstack-disk",
    )


def network_to_pb(config: NetworkConfig, out: node_pb2.EnsureNetwork) -> None:
    """Fill an EnsureNetwork from a network config."""
    out.network_uuid = config.uuid
    out.vni = config.vni
    out.netblock = config.netblock
    out.gateway = config.gateway
    out.provide_dhcp = config.provide_dhcp
    out.provide_nat = config.provide_nat
    out.services_here = config.services_here
    for lease in config.leases:
        out.leases.add(mac=lease.mac, address=lease.address, hostname=lease.hostname)
    out.peers.extend(config.peers)
    out.egress_address = config.egress_address
    out.egress_gateway = config.egress_gateway
    for f in config.floating:
        out.floating.add(address=f.address, inner_address=f.inner_address)
    out.mtu = config.mtu
    out.provide_dns = config.provide_dns
    out.dns_domain = config.dns_domain
    out.dns_upstream.extend(config.dns_upstream)


def network_from_pb(pb: node_pb2.EnsureNetwork) -> NetworkConfig:
    """A network config from the wire."""
    return NetworkConfig(
        uuid=pb.network_uuid,
        vni=pb.vni,
        netblock=pb.netblock,
        gateway=pb.gateway,
        provide_dhcp=pb.provide_dhcp,
        provide_nat=pb.provide_nat,
        services_here=pb.services_here,
        leases=tuple(Lease(x.mac, x.address, x.hostname) for x in pb.leases),
        peers=tuple(pb.peers),
        egress_address=pb.egress_address,
        egress_gateway=pb.egress_gateway,
        floating=tuple(Floating(f.address, f.inner_address) for f in pb.floating),
        mtu=pb.mtu or 1450,
        provide_dns=pb.provide_dns,
        dns_domain=pb.dns_domain,
        dns_upstream=tuple(pb.dns_upstream),
    )


# -- commands -------------------------------------------------------------------


def command_to_pb(command: Command) -> node_pb2.Command:
    """A command for the wire."""
    match command:
        case EnsureNetwork() | RemoveNetwork():
            pb = node_pb2.Command(command_id=command.command_id, instance_uuid=command.network_uuid)
        case _:
            pb = node_pb2.Command(
                command_id=command.command_id, instance_uuid=command.instance_uuid
            )
    match command:
        case CreateDomain():
            domain_to_pb(command.domain, pb.create.domain)
            pb.create.stopped = not command.start
        case PowerDomain():
            pb.power.action = command.action.value
            if command.domain is not None:
                domain_to_pb(command.domain, pb.power.domain)
        case DestroyDomain():
            pb.destroy.SetInParent()
        case AttachInterface():
            nic_to_pb(command.nic, pb.attach_interface.interface)
        case EnsureNetwork():
            network_to_pb(command.network, pb.ensure_network)
        case RemoveNetwork():
            pb.remove_network.network_uuid = command.network_uuid
        case ExportDisks():
            pb.export_disks.SetInParent()
            for d in command.disks:
                pb.export_disks.disks.add(size_gb=d.size_gb, base=d.base, bus=d.bus, type=d.type)
        case SnapshotDisk():
            pb.snapshot_disk.index = command.index
            pb.snapshot_disk.device = command.device
            pb.snapshot_disk.thin = command.thin
            pb.snapshot_disk.base = command.base
            pb.snapshot_disk.freeze_timeout = command.freeze_timeout
            pb.snapshot_disk.agent = command.agent
        case AgentExecute():
            pb.agent_execute.command_line = command.command_line
            pb.agent_execute.env.update(command.env)
            pb.agent_execute.cwd = command.cwd
            pb.agent_execute.timeout = command.timeout
            pb.agent_execute.stream_output = command.stream_output
        case AgentPut():
            pb.agent_put.path = command.path
            pb.agent_put.blob_uuid = command.blob_uuid
            pb.agent_put.mode = command.mode
            pb.agent_put.timeout = command.timeout
        case AgentGet():
            pb.agent_get.path = command.path
            pb.agent_get.timeout = command.timeout
        case ConsoleAction():
            _console_to_pb(command, pb)
        case _:
            assert_never(command)
    return pb


def _console_to_pb(command: ConsoleAction, pb: node_pb2.Command) -> None:
    match command.kind:
        case ConsoleKind.READ:
            pb.console_read.length = command.length
        case ConsoleKind.CLEAR:
            pb.console_clear.SetInParent()
        case ConsoleKind.SCREENSHOT:
            pb.console_screenshot.SetInParent()
        case ConsoleKind.OPEN:
            pb.console_open.session_id = command.session_id
        case _:
            assert_never(command.kind)


def command_from_pb(pb: node_pb2.Command) -> Command:
    """A command from the wire; WireError for one this side does not know."""
    cid, uuid = pb.command_id, pb.instance_uuid
    action = pb.WhichOneof("action")
    if action == "create":
        return CreateDomain(
            cid, uuid, domain_from_pb(uuid, pb.create.domain), start=not pb.create.stopped
        )
    if action == "power":
        try:
            power = PowerAction(pb.power.action)
        except ValueError as exc:
            raise WireError(f"unknown power action {pb.power.action!r}") from exc
        domain = domain_from_pb(uuid, pb.power.domain) if pb.power.HasField("domain") else None
        return PowerDomain(cid, uuid, power, domain)
    if action == "destroy":
        return DestroyDomain(cid, uuid)
    if action == "attach_interface":
        return AttachInterface(cid, uuid, nic_from_pb(pb.attach_interface.interface))
    if action == "ensure_network":
        return EnsureNetwork(cid, uuid, network_from_pb(pb.ensure_network))
    if action == "remove_network":
        return RemoveNetwork(cid, uuid)
    if action == "export_disks":
        disks = tuple(
            DiskRequest(d.size_gb, d.base, d.bus or "virtio", d.type or "disk")
            for d in pb.export_disks.disks
        )
        return ExportDisks(cid, uuid, disks)
    if action == "snapshot_disk":
        d = pb.snapshot_disk
        return SnapshotDisk(cid, uuid, d.index, d.device, d.thin, d.base, d.freeze_timeout, d.agent)
    if action == "agent_execute":
        e = pb.agent_execute
        return AgentExecute(
            cid, uuid, e.command_line, dict(e.env), e.cwd, e.timeout, e.stream_output
        )
    if action == "agent_put":
        p = pb.agent_put
        return AgentPut(cid, uuid, p.path, p.blob_uuid, p.mode, p.timeout)
    if action == "agent_get":
        return AgentGet(cid, uuid, pb.agent_get.path, pb.agent_get.timeout)
    if action == "console_read":
        return ConsoleAction(cid, uuid, ConsoleKind.READ, length=pb.console_read.length)
    if action == "console_clear":
        return ConsoleAction(cid, uuid, ConsoleKind.CLEAR)
    if action == "console_screenshot":
        return ConsoleAction(cid, uuid, ConsoleKind.SCREENSHOT)
    if action == "console_open":
        return ConsoleAction(cid, uuid, ConsoleKind.OPEN, session_id=pb.console_open.session_id)
    raise WireError(f"unknown command {action!r}")


# -- reports ----------------------------------------------------------------------


def register_to_pb(reg: Register) -> node_pb2.Register:
    """A registration for the wire."""
    return node_pb2.Register(
        name=reg.name,
        address=reg.address,
        cpus=reg.cpus,
        memory_mb=reg.memory_mb,
        hypervisor=reg.hypervisor,
        agent_version=reg.agent_version,
        console_host=reg.console_host,
        wire_version=reg.wire_version,
        qemu_version=reg.qemu_version,
        libvirt_version=reg.libvirt_version,
        disk_gb=reg.disk_gb,
    )


def register_from_pb(pb: node_pb2.Register) -> Register:
    """A registration from the wire (wire version 0: an agent from before it was versioned)."""
    return Register(
        pb.name,
        pb.address,
        pb.cpus,
        pb.memory_mb,
        pb.hypervisor,
        pb.agent_version,
        pb.console_host,
        pb.wire_version,
        pb.qemu_version,
        pb.libvirt_version,
        pb.disk_gb,
    )


def observation_to_pb(obs: Observation, out: node_pb2.DomainObservation) -> None:
    """Fill a wire observation."""
    out.instance_uuid = obs.instance_uuid
    out.exists = obs.exists
    out.power_state = obs.power_state
    out.reason = obs.reason
    out.console_port = obs.console_port
    out.vdi_port = obs.vdi_port
    out.vdi_tls_port = obs.vdi_tls_port
    out.legacy = obs.legacy
    out.vdi_password = obs.vdi_password


def observation_from_pb(pb: node_pb2.DomainObservation) -> Observation:
    """An observation from the wire."""
    return Observation(
        pb.instance_uuid,
        pb.exists,
        pb.power_state,
        pb.reason,
        pb.console_port,
        pb.vdi_port,
        pb.vdi_tls_port,
        pb.legacy,
        pb.vdi_password,
    )


def _agent_to_pb(agent: AgentResult, out: node_pb2.CommandResult) -> None:
    match agent:
        case ExecResult():
            out.exec_result.return_code = agent.return_code
            out.exec_result.stdout = agent.stdout
            out.exec_result.stderr = agent.stderr
        case PutResult():
            out.put_result.path = agent.path
        case GetResult():
            out.get_result.path = agent.path
            out.get_result.content_blob = agent.content_blob
            out.get_result.stat.SetInParent()
            dict_to_struct(agent.stat, out.get_result.stat)
        case _:
            assert_never(agent)


def _agent_from_pb(pb: node_pb2.CommandResult) -> AgentResult | None:
    which = pb.WhichOneof("agent")
    if which == "exec_result":
        e = pb.exec_result
        return ExecResult(e.return_code, e.stdout, e.stderr)
    if which == "put_result":
        return PutResult(pb.put_result.path)
    if which == "get_result":
        g = pb.get_result
        return GetResult(g.path, g.content_blob, struct_to_dict(g.stat))
    return None


def result_to_pb(result: Result, out: node_pb2.CommandResult) -> None:
    """Fill a wire command result."""
    out.command_id = result.command_id
    out.instance_uuid = result.instance_uuid
    out.ok = result.ok
    out.error = result.error
    out.retryable = result.retryable
    out.data = result.data
    out.blob_uuid = result.blob_uuid
    out.blobs.extend(result.blobs)
    if result.observation is not None:
        observation_to_pb(result.observation, out.observation)
    if result.agent is not None:
        _agent_to_pb(result.agent, out)
    if result.snapshot is not None:
        snap = result.snapshot
        out.snapshot.blob_uuid = snap.blob_uuid
        out.snapshot.consistency = snap.consistency
        out.snapshot.frozen.extend(snap.frozen)
        out.snapshot.note = snap.note
        out.snapshot.size = snap.size
        out.snapshot.base_blob = snap.base_blob
        out.snapshot.device = snap.device


def result_from_pb(pb: node_pb2.CommandResult) -> Result:
    """A command result from the wire."""
    return Result(
        command_id=pb.command_id,
        instance_uuid=pb.instance_uuid,
        ok=pb.ok,
        error=pb.error,
        retryable=pb.retryable,
        observation=observation_from_pb(pb.observation) if pb.HasField("observation") else None,
        agent=_agent_from_pb(pb),
        data=pb.data,
        blob_uuid=pb.blob_uuid,
        blobs=tuple(pb.blobs),
        snapshot=_snapshot_from_pb(pb.snapshot) if pb.HasField("snapshot") else None,
    )


def _snapshot_from_pb(pb: node_pb2.SnapshotDiskResult) -> SnapshotResult:
    return SnapshotResult(
        pb.blob_uuid, pb.consistency, tuple(pb.frozen), pb.note, pb.size, pb.base_blob, pb.device
    )


def event_to_pb(event: NodeEvent, out: common_pb2.Event) -> None:
    """Fill a wire event."""
    out.object_uuid = event.instance_uuid
    out.type = event.type
    out.message = event.message
    out.timestamp = event.timestamp
    out.duration = event.duration
    out.fqdn = event.fqdn
    dict_to_struct(event.extra, out.extra)


def event_from_pb(pb: common_pb2.Event) -> NodeEvent:
    """An event from the wire."""
    return NodeEvent(
        instance_uuid=pb.object_uuid,
        message=pb.message,
        type=pb.type,
        timestamp=pb.timestamp,
        duration=pb.duration,
        extra=struct_to_dict(pb.extra),
        fqdn=pb.fqdn,
    )


def relay_to_pb(relay: ConsoleRelay) -> node_pb2.ConsoleRelay:
    """Console bytes for the wire."""
    return node_pb2.ConsoleRelay(
        session_id=relay.session_id, data=relay.data, close=relay.close, error=relay.error
    )


def relay_from_pb(pb: node_pb2.ConsoleRelay) -> ConsoleRelay:
    """Console bytes from the wire."""
    return ConsoleRelay(pb.session_id, pb.data, pb.close, pb.error)


def report_to_pb(report: Report) -> node_pb2.NodeMessage:
    """A report for the wire."""
    message = node_pb2.NodeMessage()
    match report:
        case Result():
            result_to_pb(report, message.result)
        case Observation():
            observation_to_pb(report, message.observation)
        case NodeEvent():
            event_to_pb(report, message.event.event)
        case Inventory():
            for obs in report.domains:
                observation_to_pb(obs, message.inventory.domains.add())
            message.inventory.networks.extend(report.networks)
            message.inventory.SetInParent()
        case AgentStatus():
            message.agent_status.instance_uuid = report.instance_uuid
            message.agent_status.agent_state = report.agent_state
            message.agent_status.boot_time = report.boot_time
        case ExecOutput():
            message.exec_output.command_id = report.command_id
            message.exec_output.stream = report.stream
            message.exec_output.data = report.data
        case ConsoleRelay():
            message.console.CopyFrom(relay_to_pb(report))
        case Heartbeat():
            message.heartbeat.seq = report.seq
            message.heartbeat.sent_at = report.sent_at
        case _:
            assert_never(report)
    return message


def report_from_pb(pb: node_pb2.NodeMessage) -> Report:
    """A report from the wire (not a register or a batch: those are the stream's own)."""
    body = pb.WhichOneof("body")
    if body == "result":
        return result_from_pb(pb.result)
    if body == "observation":
        return observation_from_pb(pb.observation)
    if body == "event":
        return event_from_pb(pb.event.event)
    if body == "inventory":
        domains = tuple(observation_from_pb(d) for d in pb.inventory.domains)
        return Inventory(domains, tuple(pb.inventory.networks))
    if body == "agent_status":
        s = pb.agent_status
        return AgentStatus(s.instance_uuid, s.agent_state, s.boot_time)
    if body == "exec_output":
        o = pb.exec_output
        return ExecOutput(o.command_id, o.stream, o.data)
    if body == "console":
        return relay_from_pb(pb.console)
    if body == "heartbeat":
        return Heartbeat(pb.heartbeat.seq, pb.heartbeat.sent_at)
    raise WireError(f"unexpected node message {body!r}")


def delivery_to_pb(delivery: Delivery) -> node_pb2.Command:
    """A command as sent, with its request id."""
    pb = command_to_pb(delivery.command)
    pb.request_id = delivery.request_id
    return pb


def delivery_from_pb(pb: node_pb2.Command) -> Delivery:
    """A command as received, with its request id; WireError for an unknown command."""
    return Delivery(command_from_pb(pb), pb.request_id)


def control_to_pb(item: Delivery | ConsoleRelay) -> node_pb2.ControlMessage:
    """A command or console bytes for a node's stream."""
    if isinstance(item, ConsoleRelay):
        return node_pb2.ControlMessage(console=relay_to_pb(item))
    return node_pb2.ControlMessage(command=delivery_to_pb(item))


# -- bytes, for the control plane's store (a command queued for a node on another replica) --


def delivery_to_bytes(delivery: Delivery) -> bytes:
    """A command and its request id as the node stream's ``Command`` message, serialised."""
    return delivery_to_pb(delivery).SerializeToString()


def delivery_from_bytes(data: bytes) -> Delivery:
    """A command from delivery_to_bytes; WireError when it is not one."""
    pb = node_pb2.Command()
    try:
        pb.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise WireError(f"not a node command: {exc}") from exc
    return delivery_from_pb(pb)


def result_to_bytes(result: Result) -> bytes:
    """A command's result as the node stream's ``CommandResult`` message, serialised."""
    pb = node_pb2.CommandResult()
    result_to_pb(result, pb)
    return pb.SerializeToString()


def result_from_bytes(data: bytes) -> Result:
    """A result from result_to_bytes; WireError when it is not one."""
    pb = node_pb2.CommandResult()
    try:
        pb.ParseFromString(data)
    except Exception as exc:  # protobuf's DecodeError
        raise WireError(f"not a command result: {exc}") from exc
    return result_from_pb(pb)
