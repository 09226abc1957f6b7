"""A node agent records, per cluster, the networks it made on its host, and under which names."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeagent.errors import FatalError
from nodeagent.network.naming import Names
from nodeagent.network.record import NetworkRecord, RecordError, record_path

UUID = "6a1c0f3e-2b7d-4c55-9a0e-1f2d3c4b5a69"


def test_a_record_is_made_with_the_legacy_candidates_and_kept(tmp_path: Path) -> None:
    """The first open writes the record (with networks found from before it); later ones read."""
    assert not NetworkRecord.exists(tmp_path, "c1")
    record = NetworkRecord.open(tmp_path, "c1", {UUID: Names.of("mc", UUID)})
    assert record.path == record_path(tmp_path, "c1") == tmp_path / "network-record-c1.json"
    assert record.legacy_names(UUID) == Names.of("mc", UUID) and record.names(UUID) is None
    again = NetworkRecord.open(tmp_path, "c1", {})
    assert again.legacy_names(UUID) == Names.of("mc", UUID)


def test_adding_and_dropping_are_written_at_once(tmp_path: Path) -> None:
    """A network is recorded (names and VXLAN id) before it is made, and forgotten after removal."""
    record = NetworkRecord.open(tmp_path, "c1", {UUID: Names.of("mc", UUID)})
    record.add(UUID, Names.of("mc", UUID), 4242)
    reread = NetworkRecord.open(tmp_path, "c1")
    assert reread.names(UUID) == Names.of("mc", UUID) and reread.vni(UUID) == 4242
    assert reread.legacy_names(UUID) is None  # adopted
    reread.set_floating("192.168.240.0/24")
    reread.drop(UUID)
    data = json.loads(record.path.read_text())
    assert data == {"cluster": "c1", "networks": {}, "legacy": {}, "floating": "192.168.240.0/24"}
    assert [p.name for p in tmp_path.iterdir()] == ["network-record-c1.json"]


def test_names_are_those_recorded_whatever_the_prefix_now(tmp_path: Path) -> None:
    """A network keeps the names it was made under, so a changed prefix still finds it."""
    record = NetworkRecord.open(tmp_path, "c1")
    record.add(UUID, Names.of("old", UUID), 1)
    assert NetworkRecord.open(tmp_path, "c1").names(UUID) == Names.of("old", UUID)


def test_each_cluster_has_its_own_record(tmp_path: Path) -> None:
    """Records of two clusters are two files; a file naming another cluster is refused."""
    NetworkRecord.open(tmp_path, "c1").add(UUID, Names.of("mc", UUID), 1)
    assert NetworkRecord.open(tmp_path, "c2").names(UUID) is None
    record_path(tmp_path, "c3").write_text(json.dumps({"cluster": "c1"}))
    with pytest.raises(RecordError, match="cluster c1's, not c3's") as caught:
        NetworkRecord.open(tmp_path, "c3")
    assert isinstance(caught.value, FatalError)
    record_path(tmp_path, "c4").write_text("{not json")
    with pytest.raises(RecordError, match="cannot read the network record"):
        NetworkRecord.open(tmp_path, "c4")
