"""Which cluster this node agent serves: recorded at its first registration, then kept.

The control plane names its cluster when it accepts a node's stream. The
first time, the node agent writes it to ``<data dir>/cluster-id``; from then
on it serves that cluster only: a control plane of another cluster is refused
(the node agent logs why and keeps redialling), so that a node agent pointed
at the wrong control plane never reports to it, nor takes its commands, nor
lets it remove domains it does not know. The hypervisor manages only the
domains recorded as this cluster's.
"""

from __future__ import annotations

import os
from pathlib import Path

from nodeagent.errors import NodeAgentError


class ForeignCluster(NodeAgentError):
    """The control plane belongs to another cluster than this node agent's."""


class Membership:
    """The cluster id kept in a node agent's data folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def known(self) -> str:
        """The cluster this node serves ("" before its first registration)."""
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return ""

    def join(self, cluster_id: str) -> str:
        """Accept a control plane of cluster_id: record it the first time; ForeignCluster
        when this node already serves another. "" (a control plane that names no cluster)
        keeps what is known."""
        known = self.known()
        if not cluster_id:
            return known
        if known and known != cluster_id:
            raise ForeignCluster(
                f"the control plane is cluster {cluster_id}'s, but this node serves cluster "
                f"{known} (recorded in {self.path}); refusing to serve it"
            )
        if not known:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(cluster_id + "\n")
            os.replace(tmp, self.path)
        return cluster_id
