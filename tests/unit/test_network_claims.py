"""Clusters on one host claim VXLAN ids, egress bridges and floating ranges; no overlaps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from nodeagent.app import _fatal, main
from nodeagent.errors import FatalError
from nodeagent.network.claims import ClaimRefused, ClaimsError, HostClaims


def holder(tmp_path: Path, name: str) -> Path:
    """A node agent's record file (a holder is live while it exists)."""
    path = tmp_path / name / "network-record.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{}")
    return path


def test_another_clusters_egress_bridge_is_refused(tmp_path: Path) -> None:
    """The same egress bridge for a second cluster is refused, naming the holder and the setting."""
    claims = HostClaims(tmp_path / "claims.json")
    a, b = holder(tmp_path, "a"), holder(tmp_path, "b")
    claims.claim(a, "c1", egress_bridge="mcegress")
    with pytest.raises(ClaimRefused, match=r"mcegress is cluster c1's.*EGRESS_BRIDGE") as caught:
        claims.claim(b, "c2", egress_bridge="mcegress")
    assert caught.value.retryable is False and isinstance(caught.value, FatalError)
    assert str(b) not in claims.read()  # a refused claim changes nothing
    claims.claim(b, "c2", egress_bridge="mcegress2")
    assert claims.read()[str(b)]["egress_bridge"] == "mcegress2"


def test_overlapping_floating_ranges_are_refused(tmp_path: Path) -> None:
    """A floating range overlapping another cluster's is refused; a disjoint one is taken."""
    claims = HostClaims(tmp_path / "claims.json")
    a, b = holder(tmp_path, "a"), holder(tmp_path, "b")
    claims.claim(a, "c1", floating="192.168.240.0/24")
    with pytest.raises(ClaimRefused, match=r"192.168.240.128/25 overlaps 192.168.240.0/24"):
        claims.claim(b, "c2", floating="192.168.240.128/25")
    claims.claim(b, "c2", floating="192.168.241.0/24")


def test_a_vxlan_id_is_one_clusters_until_released(tmp_path: Path) -> None:
    """Another cluster's VXLAN id is refused until its network is removed (released)."""
    claims = HostClaims(tmp_path / "claims.json")
    a, b = holder(tmp_path, "a"), holder(tmp_path, "b")
    claims.claim(a, "c1", vni=4242, network="net-a")
    with pytest.raises(ClaimRefused, match=r"VXLAN id 4242 is used on this host by network net-a"):
        claims.claim(b, "c2", vni=4242, network="net-b")
    assert claims.networks_of_others("c2") == {"net-a"}
    claims.release_vni(a, 4242)
    claims.claim(b, "c2", vni=4242, network="net-b")
    assert claims.read()[str(b)]["vxlan"] == {"4242": "net-b"}


def test_one_clusters_node_agents_share_freely(tmp_path: Path) -> None:
    """Two node agents of one cluster on one host may use the same bridge, range and id."""
    claims = HostClaims(tmp_path / "claims.json")
    a, b = holder(tmp_path, "a"), holder(tmp_path, "b")
    claims.claim(a, "c1", egress_bridge="eg", floating="10.9.0.0/24", vni=7, network="n")
    claims.claim(b, "c1", egress_bridge="eg", floating="10.9.0.0/24", vni=7, network="n")
    assert set(claims.read()) == {str(a), str(b)}


def test_a_holder_whose_record_is_gone_holds_nothing(tmp_path: Path) -> None:
    """A node agent's claims end with its record file (its data folder removed)."""
    claims = HostClaims(tmp_path / "claims.json")
    a, b = holder(tmp_path, "a"), holder(tmp_path, "b")
    claims.claim(a, "c1", egress_bridge="mcegress")
    a.unlink()
    claims.claim(b, "c2", egress_bridge="mcegress")
    assert list(json.loads((tmp_path / "claims.json").read_text())["holders"]) == [str(b)]


def test_the_file_is_replaced_whole_and_locked_beside(tmp_path: Path) -> None:
    """Writes leave the claims file and its lock file, never a temporary one."""
    claims = HostClaims(tmp_path / "run" / "claims.json")
    claims.claim(holder(tmp_path, "a"), "c1", egress_bridge="x")
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == [
        "claims.json",
        "claims.json.lock",
    ]
    assert (tmp_path / "run" / "claims.json").stat().st_mode & 0o777 == 0o644


def test_a_refused_claim_at_start_stops_the_node_agent_with_exit_1(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A ClaimRefused at start or registration (inside the agent's task group) is exit 1."""

    async def refused(settings: object) -> None:
        raise ExceptionGroup("tasks", [ClaimRefused("egress bridge mcegress is cluster c1's")])

    monkeypatch.setenv("MINICLOUD_NODE_PLAINTEXT", "1")
    monkeypatch.setattr("nodeagent.app.run", refused)
    # main configures logging for the process; the suite's loggers must keep theirs.
    monkeypatch.setattr("nodeagent.app.logs.configure", lambda **_: None)
    with pytest.raises(SystemExit) as stopped:
        main()
    assert stopped.value.code == 1
    assert _fatal(ValueError("other")) is None


def test_an_unreadable_claims_file_is_a_clear_fatal_error(tmp_path: Path) -> None:
    """A damaged claims file stops the claim, naming the file, rather than being overwritten."""
    (tmp_path / "claims.json").write_text("[1, 2")
    with pytest.raises(ClaimsError, match="cannot read the claims file"):
        HostClaims(tmp_path / "claims.json").claim(holder(tmp_path, "a"), "c1", egress_bridge="e")
    assert (tmp_path / "claims.json").read_text() == "[1, 2"
