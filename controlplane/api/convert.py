"""Conversions between the public API's protobuf messages and the control plane's model.

The node stream's messages have their own converters (common.nodewire.convert),
which hold the Struct helpers both use.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from common.nodewire.convert import dict_to_struct, ints, struct_to_dict
from controlplane.model import (
    DiskSpec,
    Event,
    Instance,
    InstanceSpec,
    Interface,
    NetworkSpec,
    Nic,
    VideoSpec,
)
from controlplane.validation import machine_type
from protos import common_pb2, instances_pb2


def value_to_python(value: struct_pb2.Value) -> Any:
    """A Value as a plain JSON value, with whole-number floats turned back into ints."""
    return ints(json_format.MessageToDict(value))


def spec_from_pb(pb: common_pb2.InstanceSpec) -> InstanceSpec:
    """A model spec from the wire (defaults are applied later, by validation)."""
    return InstanceSpec(
        name=pb.name,
        cpus=pb.cpus,
        memory=pb.memory,
        disks=tuple(DiskSpec(d.size_gb, d.base, d.bus, d.type) for d in pb.disks),
        networks=tuple(
            NetworkSpec(n.network_uuid, n.macaddress, n.address, n.model, n.float)
            for n in pb.networks
        ),
        video=VideoSpec(pb.video.model, pb.video.memory, pb.video.vdi),
        ssh_key=pb.ssh_key,
        user_data=pb.user_data,
        metadata=struct_to_dict(pb.metadata),
        side_channels=tuple(pb.side_channels),
        uefi=pb.uefi,
        secure_boot=pb.secure_boot,
        nvram_template=pb.nvram_template,
        configdrive=pb.configdrive,
    )


def spec_to_pb(spec: InstanceSpec, out: common_pb2.InstanceSpec) -> None:
    """Fill a wire spec from the model."""
    out.name = spec.name
    out.cpus = spec.cpus
    out.memory = spec.memory
    for d in spec.disks:
        out.disks.add(size_gb=d.size_gb, base=d.base, bus=d.bus, type=d.type)
    for n in spec.networks:
        out.networks.add(
            network_uuid=n.network_uuid,
            macaddress=n.macaddress,
            address=n.address,
            model=n.model,
            float=n.float,
        )
    out.video.model = spec.video.model
    out.video.memory = spec.video.memory
    out.video.vdi = spec.video.vdi
    out.ssh_key = spec.ssh_key
    out.user_data = spec.user_data
    dict_to_struct(spec.metadata, out.metadata)
    out.side_channels.extend(spec.side_channels)
    out.uefi = spec.uefi
    out.secure_boot = spec.secure_boot
    out.nvram_template = spec.nvram_template
    out.configdrive = spec.configdrive


def instance_to_pb(instance: Instance) -> instances_pb2.Instance:
    """An instance for the wire."""
    pb = instances_pb2.Instance(
        uuid=instance.uuid,
        namespace=instance.namespace,
        state=instance.state,
        error_message=instance.error_message,
        power_state=instance.power_state,
        node=instance.node,
        version=instance.version,
        created_at=instance.created_at,
        state_updated_at=instance.state_updated_at,
        agent_state=instance.agent_state,
        agent_system_boot_time=instance.agent_system_boot_time,
        console_port=instance.console_port,
        vdi_port=instance.vdi_port,
        vdi_tls_port=instance.vdi_tls_port,
        machine_type=machine_type(instance.spec),
    )
    spec_to_pb(instance.spec, pb.spec)
    dict_to_struct(instance.metadata, pb.metadata)
    for nic in instance.interfaces:
        nic_to_pb(nic, pb.interfaces.add(), instance.uuid)
    return pb


class InstanceMessages:
    """Wire messages of listed instances, each converted once per decoded record.

    The store's records hand out the same ``Instance`` object while its
    stored bytes are unchanged (store/records.py), so a message is reused
    while it was made from that very object, and made anew for a changed
    record. The messages are shared: copy them into a response (``extend``),
    never change them.
    """

    def __init__(self, limit: int = 50_000) -> None:
        self.limit = limit
        self._by_uuid: dict[str, tuple[Instance, instances_pb2.Instance]] = {}

    def message(self, instance: Instance) -> instances_pb2.Instance:
        """The wire message for instance (shared; do not change it)."""
        cached = self._by_uuid.get(instance.uuid)
        if cached is not None and cached[0] is instance:
            return cached[1]
        pb = instance_to_pb(instance)
        if cached is None and len(self._by_uuid) >= self.limit:
            del self._by_uuid[next(iter(self._by_uuid))]
        self._by_uuid[instance.uuid] = (instance, pb)
        return pb


def nic_to_pb(nic: Nic, out: common_pb2.NetworkInterface, instance_uuid: str = "") -> None:
    """Fill a wire interface from what a node needs of it."""
    out.uuid = nic.uuid
    out.network_uuid = nic.network_uuid
    out.instance_uuid = instance_uuid
    out.macaddr = nic.macaddr
    out.ipv4 = nic.ipv4
    out.model = nic.model
    out.order = nic.order


def interface_to_pb(iface: Interface) -> common_pb2.NetworkInterface:
    """An interface for the wire."""
    pb = common_pb2.NetworkInterface(
        uuid=iface.uuid,
        network_uuid=iface.network_uuid,
        instance_uuid=iface.instance_uuid,
        macaddr=iface.macaddr,
        ipv4=iface.ipv4,
        order=iface.order,
        model=iface.model,
        floating=iface.floating,
        state=iface.state,
        version=iface.version,
        namespace=iface.namespace,
    )
    dict_to_struct(iface.metadata, pb.metadata)
    return pb


def event_to_pb(event: Event) -> common_pb2.Event:
    """An event for the wire."""
    pb = common_pb2.Event(
        object_uuid=event.object_uuid,
        type=event.type,
        message=event.message,
        timestamp=event.timestamp,
        fqdn=event.fqdn,
        duration=event.duration,
    )
    dict_to_struct(event.extra, pb.extra)
    return pb


def event_from_pb(pb: common_pb2.Event) -> Event:
    """An event from the wire."""
    return Event(
        object_uuid=pb.object_uuid,
        type=pb.type,
        message=pb.message,
        timestamp=pb.timestamp,
        fqdn=pb.fqdn,
        duration=pb.duration,
        extra=struct_to_dict(pb.extra),
    )


__all__ = ["dict_to_struct", "ints", "struct_to_dict"]
