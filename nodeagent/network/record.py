"""What a node agent made on its host for networks, recorded as its cluster's.

Device names (15 characters) are too short to carry a cluster's id, so each
node agent keeps, in its data folder, one file per cluster it serves:
``<data dir>/network-record-<cluster id>.json``. It lists every network the
node agent made, with the names it made it under (bridge, VXLAN device,
namespace, veths; the namespace holds the network's iptables rules, its
folder ``<data dir>/networks/<uuid>/`` its dnsmasq's files), and the
floating range its cluster uses. It is written before anything is made and
replaced atomically, so after a crash it holds at least what exists.

The network driver lists, touches and removes only what this record holds.
``legacy`` lists networks of the format before the record existed (found at
the record's creation under the driver's prefix, not held by another
cluster's record): they are adopted when this cluster's control plane asks
for them, and otherwise left alone.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

from nodeagent.errors import FatalError
from nodeagent.network.naming import Names
from nodeagent.network.protocol import NetworkError


class RecordError(NetworkError, FatalError):
    """The record cannot be read or is another cluster's (fatal at start)."""

    retryable = False


def record_path(data_dir: Path, cluster_id: str) -> Path:
    """Where a node agent's record for a cluster lives."""
    return data_dir / f"network-record-{cluster_id}.json"


class NetworkRecord:
    """One cluster's networks on this node, as a file."""

    def __init__(self, path: Path, cluster_id: str, data: dict[str, Any]) -> None:
        self.path = path
        self.cluster_id = cluster_id
        self.networks: dict[str, dict[str, Any]] = dict(data.get("networks", {}))
        self.legacy: dict[str, dict[str, Any]] = dict(data.get("legacy", {}))
        self.floating: str = str(data.get("floating", ""))

    @classmethod
    def exists(cls, data_dir: Path, cluster_id: str) -> bool:
        """Whether the record has been made."""
        return record_path(data_dir, cluster_id).exists()

    @classmethod
    def open(
        cls, data_dir: Path, cluster_id: str, legacy: dict[str, Names] | None = None
    ) -> NetworkRecord:
        """The record of cluster_id; made (with these legacy candidates) when missing."""
        path = record_path(data_dir, cluster_id)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            record = cls(path, cluster_id, {})
            record.legacy = {uuid: asdict(names) for uuid, names in (legacy or {}).items()}
            record.save()
            return record
        except (OSError, ValueError) as exc:
            raise RecordError(f"cannot read the network record {path}: {exc}") from None
        if not isinstance(data, dict) or data.get("cluster") != cluster_id:
            found = data.get("cluster") if isinstance(data, dict) else None
            raise RecordError(f"{path} is cluster {found}'s, not {cluster_id}'s")
        return cls(path, cluster_id, data)

    def names(self, network_uuid: str) -> Names | None:
        """The names a recorded network was made under."""
        entry = self.networks.get(network_uuid)
        return None if entry is None else _names(entry)

    def legacy_names(self, network_uuid: str) -> Names | None:
        """The names of a network found from before the record (None if not one)."""
        entry = self.legacy.get(network_uuid)
        return None if entry is None else _names(entry)

    def vni(self, network_uuid: str) -> int:
        """The VXLAN id a recorded network was claimed with (0: none)."""
        return int(self.networks.get(network_uuid, {}).get("vni", 0))

    def add(self, network_uuid: str, names: Names, vni: int) -> None:
        """Record a network (before making it) and save."""
        self.legacy.pop(network_uuid, None)
        self.networks[network_uuid] = {**asdict(names), "vni": vni}
        self.save()

    def drop(self, network_uuid: str) -> None:
        """Forget a network (after removing it) and save."""
        self.networks.pop(network_uuid, None)
        self.legacy.pop(network_uuid, None)
        self.save()

    def set_floating(self, floating: str) -> None:
        """Record the cluster's floating range and save."""
        if floating != self.floating:
            self.floating = floating
            self.save()

    def save(self) -> None:
        """Replace the file atomically."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        text = json.dumps(
            {
                "cluster": self.cluster_id,
                "networks": self.networks,
                "legacy": self.legacy,
                "floating": self.floating,
            },
            indent=1,
            sort_keys=True,
        )
        temporary = self.path.with_name(f".{self.path.name}.new")
        with open(temporary, "w") as out:
            out.write(text + "\n")
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, self.path)


def _names(entry: dict[str, Any]) -> Names:
    return Names(
        bridge=entry["bridge"],
        vxlan=entry["vxlan"],
        gateway_veth=entry["gateway_veth"],
        egress_veth=entry["egress_veth"],
        netns=entry["netns"],
    )
