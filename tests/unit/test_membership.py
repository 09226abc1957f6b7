"""A node agent serves the cluster of its first registration, and refuses any other."""

from __future__ import annotations

from pathlib import Path

import pytest

from nodeagent.membership import ForeignCluster, Membership


def test_the_first_cluster_is_recorded_and_kept(tmp_path: Path) -> None:
    """Before any registration nothing is known; the first cluster named is written down."""
    membership = Membership(tmp_path / "node" / "cluster-id")
    assert membership.known() == ""
    assert membership.join("c1") == "c1"
    assert (tmp_path / "node" / "cluster-id").read_text() == "c1\n"
    assert Membership(tmp_path / "node" / "cluster-id").join("c1") == "c1"


def test_a_control_plane_of_another_cluster_is_refused(tmp_path: Path) -> None:
    """Another cluster's control plane is ForeignCluster, naming both; the record stays."""
    membership = Membership(tmp_path / "cluster-id")
    membership.join("c1")
    with pytest.raises(ForeignCluster, match=r"cluster c2's.*serves cluster c1"):
        membership.join("c2")
    assert membership.known() == "c1"


def test_a_control_plane_that_names_no_cluster_keeps_what_is_known(tmp_path: Path) -> None:
    """An older control plane names no cluster: the node keeps its own, records nothing new."""
    membership = Membership(tmp_path / "cluster-id")
    assert membership.join("") == ""
    assert not (tmp_path / "cluster-id").exists()
    membership.join("c1")
    assert membership.join("") == "c1"
