"""Protobuf messages as the JSON objects Shaken Fist returns (compat doc §5-§7).

Empty protobuf fields become ``null`` where Shaken Fist has null; every key the
client indexes directly is always present.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import json_format, struct_pb2

from common import sidechannels
from protos import (
    agent_pb2,
    artifacts_pb2,
    auth_pb2,
    blobs_pb2,
    common_pb2,
    instances_pb2,
    networks_pb2,
    nodes_pb2,
    uploads_pb2,
)

JsonDict = dict[str, Any]
# Shaken Fist's object schema versions (compat doc §5): the client only shows them.
INSTANCE_VERSION = 13
INTERFACE_VERSION = 3
NETWORK_VERSION = 4
# Our artifact types -> Shaken Fist's.
ARTIFACT_TYPES = {"upload": "image", "label": "label"}


def _none(value: Any) -> Any:
    return value or None


def _ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    return value


def struct_dict(value: struct_pb2.Struct) -> JsonDict:
    """A Struct as a plain dict (whole numbers as ints)."""
    if not value.fields:
        return {}
    return _ints(json_format.MessageToDict(value))  # type: ignore[no-any-return]


def instance(pb: instances_pb2.Instance, interfaces: list[JsonDict] | None = None) -> JsonDict:
    """An instance object (§5.1); ``interfaces`` are its full interface objects in order.

    Without them, the interfaces the instance record lists are shown as far as
    it knows them (no state, floating address or metadata).
    """
    spec = pb.spec
    agent_state: str | None = pb.agent_state or None
    if agent_state is None and sidechannels.AGENT_CHANNEL in spec.side_channels:
        agent_state = "not ready (no contact)"
    return {
        "uuid": pb.uuid,
        "name": spec.name,
        "namespace": pb.namespace,
        "state": pb.state,
        "version": INSTANCE_VERSION,
        "metadata": struct_dict(pb.metadata),
        "cpus": spec.cpus,
        "memory": spec.memory,
        "disk_spec": [
            {"base": d.base or None, "size": d.size_gb, "bus": d.bus, "type": d.type}
            for d in spec.disks
        ],
        "disks": [],
        "video": {"model": spec.video.model, "memory": spec.video.memory, "vdi": spec.video.vdi},
        "uefi": spec.uefi,
        "secure_boot": spec.secure_boot,
        "nvram_template": _none(spec.nvram_template),
        "machine_type": "q35" if spec.secure_boot else "pc",
        "configdrive": spec.configdrive or "openstack-disk",
        "side_channels": sidechannels.advertised(spec.side_channels),
        "ssh_key": _none(spec.ssh_key),
        "user_data": _none(spec.user_data),
        "power_state": _none(pb.power_state),
        "agent_state": agent_state,
        "agent_start_time": None,
        "agent_system_boot_time": _none(pb.agent_system_boot_time),
        "error_message": _none(pb.error_message),
        "node": _none(pb.node),
        "console_port": _none(pb.console_port),
        "vdi_port": _none(pb.vdi_port),
        "vdi_tls_port": _none(pb.vdi_tls_port),
        "interfaces": (
            interfaces if interfaces is not None else [interface(i) for i in pb.interfaces]
        ),
        "created_at": pb.created_at,
    }


def event(pb: common_pb2.Event) -> JsonDict:
    """An event object (§6.1)."""
    return {
        "type": pb.type,
        "timestamp": pb.timestamp,
        "fqdn": pb.fqdn,
        "duration": _none(pb.duration),
        "message": pb.message,
        "extra": struct_dict(pb.extra) if pb.HasField("extra") else None,
    }


def agent_operation(pb: agent_pb2.AgentOperation) -> JsonDict:
    """An agent operation (§7.1), results keyed "0", "1", ..."""
    view: JsonDict = {
        "uuid": pb.uuid,
        "state": pb.state,
        "metadata": {},
        "version": 1,
        "namespace": pb.namespace,
        "instance_uuid": pb.instance_uuid,
        "commands": [struct_dict(c) for c in pb.commands],
        "results": {key: struct_dict(pb.results[key]) for key in sorted(pb.results, key=_index)},
    }
    if pb.error_message:
        view["error_message"] = pb.error_message
    return view


def _index(key: str) -> int:
    return int(key) if key.isdigit() else 1 << 30


def blob(pb: blobs_pb2.Blob) -> JsonDict:
    """A blob object (§5.7), with the always-present ``transcodes`` and ``instances``."""
    return {
        "uuid": pb.uuid,
        "state": pb.state,
        "metadata": {},
        "version": 6,
        "size": pb.size,
        "modified": pb.created_at,
        "fetched_at": pb.created_at,
        "last_used": pb.created_at,
        "depends_on": None,
        "transcodes": {},
        "locations": [],
        "reference_count": pb.reference_count,
        "sha512": pb.sha512,
        "instances": list(pb.instances),
    }


def artifact(pb: artifacts_pb2.Artifact, blobs: dict[str, blobs_pb2.Blob]) -> JsonDict:
    """An artifact object (§5.7): ``blobs`` keyed by the string of each version index."""
    versions: JsonDict = {}
    for v in pb.versions:
        found = blobs.get(v.blob_uuid)
        versions[str(v.index)] = {
            "uuid": v.blob_uuid,
            "size": found.size if found else None,
            "reference_count": found.reference_count if found else None,
            "depends_on": None,
            "instances": list(found.instances) if found else [],
        }
    return {
        "uuid": pb.uuid,
        "state": pb.state,
        "metadata": {},
        "version": 4,
        "artifact_type": ARTIFACT_TYPES.get(pb.type, "other"),
        "name": pb.name,
        "source_url": pb.source_url or None,
        "max_versions": pb.max_versions,
        "namespace": pb.namespace,
        "shared": pb.shared,
        "index": pb.index,
        "blob_uuid": pb.blob_uuid or None,
        "blobs": versions,
    }


def upload(pb: uploads_pb2.Upload) -> JsonDict:
    """An upload object (§5.7)."""
    return {
        "uuid": pb.uuid,
        "state": pb.state,
        "metadata": {},
        "version": 1,
        "node": pb.node,
        "created_at": pb.created_at,
        "size": pb.size,
    }


def namespace(pb: auth_pb2.Namespace) -> JsonDict:
    """A namespace object (§5.7)."""
    return {
        "name": pb.name,
        "state": pb.state,
        "metadata": {},
        "version": pb.version,
        "keys": list(pb.keys),
        "trust": {"full": list(pb.trusted)},
    }


def interface(pb: common_pb2.NetworkInterface) -> JsonDict:
    """A network interface object (§5.5)."""
    return {
        "uuid": pb.uuid,
        "state": pb.state or None,
        "metadata": struct_dict(pb.metadata),
        "version": INTERFACE_VERSION,
        "network_uuid": pb.network_uuid,
        "instance_uuid": pb.instance_uuid,
        "macaddr": pb.macaddr,
        "ipv4": _none(pb.ipv4),
        "order": pb.order,
        "model": pb.model or "virtio",
        "floating": _none(pb.floating),
    }


def network(pb: networks_pb2.Network) -> JsonDict:
    """A network object (§5.7), with 0.7.2's ``vxid`` and v0.8's ``vxlan_id``."""
    return {
        "uuid": pb.uuid,
        "state": pb.state,
        "metadata": struct_dict(pb.metadata),
        "version": NETWORK_VERSION,
        "name": pb.name,
        "namespace": pb.namespace,
        "netblock": pb.netblock,
        "provide_dhcp": pb.provide_dhcp,
        "provide_nat": pb.provide_nat,
        "provide_dns": pb.provide_dns,
        "floating_gateway": _none(pb.floating_gateway),
        "vxid": pb.vxlan_id,
        "vxlan_id": pb.vxlan_id,
    }


def address(pb: networks_pb2.Address) -> JsonDict:
    """One address reservation of a network (v0.8's ``list-addresses``)."""
    return {
        "address": pb.address,
        "user": [pb.user_type, pb.user_uuid] if pb.user_type else None,
        "when": pb.when,
        "type": pb.type,
        "comment": _none(pb.comment),
    }


def node(pb: nodes_pb2.NodeInfo) -> JsonDict:
    """A node object: Shaken Fist's keys (name, ip, lastseen, version, release, state, roles)
    then minicloud's own (capacity, commitments, connectivity, versions)."""
    return {
        "name": pb.name,
        "ip": pb.address,
        "lastseen": pb.last_seen,
        "state": pb.state,
        "version": pb.agent_version,
        "release": pb.agent_version,
        "is_hypervisor": True,
        "is_network_node": False,
        "is_cluster_maintainer": False,
        "is_etcd_master": False,
        "is_eventlog_node": False,
        "is_database_node": False,
        "connected": pb.connected,
        "first_seen": pb.first_seen,
        "hypervisor": pb.hypervisor,
        "qemu_version": pb.qemu_version,
        "libvirt_version": pb.libvirt_version,
        "cpus": pb.cpus,
        "memory_mb": pb.memory_mb,
        "disk_gb": pb.disk_gb,
        "committed_cpus": pb.committed_cpus,
        "committed_memory_mb": pb.committed_memory_mb,
        "committed_disk_gb": pb.committed_disk_gb,
        "instance_count": pb.instance_count,
        "instances": [
            {
                "uuid": i.uuid,
                "name": i.name,
                "namespace": i.namespace,
                "state": i.state,
                "power_state": i.power_state,
            }
            for i in pb.instances
        ],
    }
