"""The CA folder behind minicloud-ca: private keys, no silent overwrites, renew and revoke."""

from __future__ import annotations

import datetime
import stat
from pathlib import Path

import pytest

from client.cacli import main
from client.cadir import CaDir, CaError

NOW = datetime.datetime(2026, 12, 4, 12, 0, tzinfo=datetime.UTC)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_makes_a_private_ca_with_a_cluster_id_once(tmp_path: Path) -> None:
    """Keys and the folder are owner-only; a second init is refused."""
    ca = CaDir(tmp_path / "ca")
    cluster_id = ca.init(NOW)
    assert ca.cluster_id() == cluster_id
    assert mode(tmp_path / "ca") == 0o700 and mode(tmp_path / "ca" / "ca.key") == 0o600
    with pytest.raises(CaError, match="already exists"):
        ca.init(NOW)


def test_issue_renew_revoke_list(tmp_path: Path) -> None:
    """Issuing a name twice is refused; renew revokes the old serial; list shows each state."""
    ca = CaDir(tmp_path / "ca")
    ca.init(NOW)
    path = ca.issue("node", "node1", NOW)
    assert mode(path.with_suffix(".key")) == 0o600
    with pytest.raises(CaError, match="already issued"):
        ca.issue("node", "node1", NOW)
    ca.issue("server", "cp", NOW, sans=("127.0.0.1",))
    first = {i.info.name: i.info.serial for i in ca.listing()}["node1"]
    ca.renew("node1", NOW)
    assert first in ca.revoked_serials()
    listed = {i.info.name: i for i in ca.listing()}
    assert listed["node1"].info.serial != first and not listed["node1"].revoked
    assert listed["cp"].info.sans == ("127.0.0.1",)
    ca.revoke("cp", NOW)
    assert {i.info.name: i.revoked for i in ca.listing()} == {"cp": True, "node1": False}


def test_the_command_reports_errors_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without a CA, or with a bad name, minicloud-ca says why and exits 1."""
    folder = str(tmp_path / "ca")
    assert main(["--dir", folder, "issue-node", "node1"]) == 1
    assert "run 'minicloud-ca init' first" in capsys.readouterr().err
    assert main(["--dir", folder, "init"]) == 0
    assert main(["--dir", folder, "issue-node", "../x"]) == 1
    assert "must be" in capsys.readouterr().err
    assert main(["--dir", folder, "issue-node", "node1"]) == 0
    assert main(["--dir", folder, "list"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2].split()[:2] == ["name", "kind"] and out[-1].split()[:2] == ["node1", "node"]
