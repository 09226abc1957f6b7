"""The host-wide network claims: what each cluster's node agent uses on this machine.

Several clusters' node agents may share one host. Device names are scoped by
each node agent's record (``nodeagent.network.record``), but three things
are the host's, not a cluster's: VXLAN ids (the kernel has one VNI space per
UDP port), the egress bridge and the floating range (addresses on one
segment and routes in one table). Each node agent claims them in one JSON
file (``MINICLOUD_NODE_NETWORK_CLAIMS``, default
``/var/lib/minicloud/network-claims.json``), under an exclusive ``flock`` of
``<file>.lock``, replaced atomically. A claim that overlaps one of another
cluster's is refused (``ClaimRefused``, naming both); claims of one cluster
never conflict (two simulated nodes of a cluster may share a host).

Claims are held by a node agent's record file (its path is the holder's
key): a holder whose record file is gone (its data folder removed) holds
nothing any more and is dropped at the next write.
"""

from __future__ import annotations

import fcntl
import ipaddress
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nodeagent.errors import FatalError
from nodeagent.network.protocol import NetworkError

DEFAULT_PATH = Path("/var/lib/minicloud/network-claims.json")

Claims = dict[str, dict[str, Any]]


class ClaimsError(NetworkError, FatalError):
    """The claims file cannot be used (never retryable; fatal at start)."""

    retryable = False


class ClaimRefused(ClaimsError):
    """Another cluster on this host holds what was asked for (never retryable).

    Fatal when claiming the egress bridge or floating range at start or
    registration; an ensure refused for a VXLAN id just fails its command."""

    retryable = False


def _overlap(one: str, other: str) -> bool:
    try:
        return ipaddress.ip_network(one, strict=False).overlaps(
            ipaddress.ip_network(other, strict=False)
        )
    except ValueError:
        return False


class HostClaims:
    """The claims file of one host, read and changed under its lock."""

    def __init__(self, path: Path = DEFAULT_PATH) -> None:
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    def read(self) -> Claims:
        """Every live holder's claims (holder = record path)."""
        return self._update(None)

    def claim(
        self,
        holder: Path,
        cluster: str,
        *,
        egress_bridge: str = "",
        floating: str = "",
        vni: int = 0,
        network: str = "",
    ) -> None:
        """Claim an egress bridge, a floating range and/or a VXLAN id (for network) for
        holder, of cluster; ClaimRefused (nothing changed) if another cluster holds it."""

        def change(claims: Claims) -> None:
            mine = claims.setdefault(str(holder), {"cluster": cluster, "vxlan": {}})
            mine["cluster"] = cluster
            for key, theirs in claims.items():
                if key == str(holder) or theirs.get("cluster") == cluster:
                    continue
                who = f"cluster {theirs.get('cluster')}'s (node agent record {key})"
                if egress_bridge and theirs.get("egress_bridge") == egress_bridge:
                    raise ClaimRefused(
                        f"egress bridge {egress_bridge} is {who} on this host; give this node "
                        "agent its own MINICLOUD_NODE_NETWORK_EGRESS_BRIDGE"
                    )
                if floating and theirs.get("floating") and _overlap(floating, theirs["floating"]):
                    raise ClaimRefused(
                        f"floating range {floating} overlaps {theirs['floating']}, {who} on "
                        "this host; give this cluster its own MINICLOUD_FLOATING_NETBLOCK"
                    )
                if vni and str(vni) in theirs.get("vxlan", {}):
                    raise ClaimRefused(
                        f"VXLAN id {vni} is used on this host by network "
                        f"{theirs['vxlan'][str(vni)]}, {who}; network {network} cannot be "
                        "carried here (delete and create it again for a new VXLAN id)"
                    )
            if egress_bridge:
                mine["egress_bridge"] = egress_bridge
            if floating:
                mine["floating"] = floating
            if vni:
                mine.setdefault("vxlan", {})[str(vni)] = network

        self._update(change)

    def release_vni(self, holder: Path, vni: int) -> None:
        """holder no longer uses this VXLAN id."""

        def change(claims: Claims) -> None:
            claims.get(str(holder), {}).get("vxlan", {}).pop(str(vni), None)

        self._update(change)

    def networks_of_others(self, cluster: str) -> set[str]:
        """The network UUIDs other clusters' node agents on this host hold VXLAN ids for."""
        return {
            network
            for theirs in self.read().values()
            if theirs.get("cluster") != cluster
            for network in theirs.get("vxlan", {}).values()
        }

    def _update(self, change: Callable[[Claims], None] | None) -> Claims:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                text = self.path.read_text()
            except FileNotFoundError:
                text = ""
            try:
                loaded = json.loads(text) if text.strip() else {}
                dict(loaded.get("holders", {}))
            except (ValueError, AttributeError, TypeError) as exc:
                raise ClaimsError(f"cannot read the claims file {self.path}: {exc}") from None
            claims: Claims = {
                holder: held
                for holder, held in dict(loaded.get("holders", {})).items()
                if Path(holder).exists()
            }
            if change is not None:
                change(claims)
            if change is not None or len(claims) != len(loaded.get("holders", {})):
                _replace(self.path, json.dumps({"holders": claims}, indent=1, sort_keys=True))
            return claims


def _replace(path: Path, text: str) -> None:
    """Write a file atomically (a full temporary file, fsynced, renamed over it), 0644."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.new")
    with open(temporary, "w") as out:
        out.write(text + "\n")
        out.flush()
        os.fsync(out.fileno())
    temporary.chmod(0o644)
    os.replace(temporary, path)
