"""The `minicloud` CLI against a real control plane with a fake node."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from client import api as client_api
from client.cli import main
from controlplane.app import ControlPlane
from tests.component.conftest import SYSTEM_KEY, FakeNode


async def cli(
    plane: ControlPlane, capsys: pytest.CaptureFixture[str], *argv: str
) -> tuple[int, str]:
    """Run the CLI in a thread (it is synchronous) and capture what it prints."""
    code = await asyncio.to_thread(
        main, ["--api", f"127.0.0.1:{plane.port}", "--plaintext", "--key", SYSTEM_KEY, *argv]
    )
    out, err = capsys.readouterr()
    return code, out if code == 0 else err


async def test_create_show_list_power_events_delete(
    plane: ControlPlane, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI walks an instance through its life and prints what happened."""
    code, out = await cli(
        plane,
        capsys,
        "instance",
        "create",
        "cli-vm",
        "--memory",
        "256",
        "--disk",
        "size=3,base=debian:11,bus=sata",
        "--wait",
    )
    assert code == 0, out
    assert "created" in out and "3GB debian:11 sata disk" in out
    code, out = await cli(plane, capsys, "instance", "list")
    assert code == 0 and "cli-vm" in out
    code, out = await cli(plane, capsys, "--json", "instance", "poweroff", "cli-vm")
    assert code == 0 and json.loads(out)["power_state"] == "off"
    code, out = await cli(plane, capsys, "instance", "events", "cli-vm", "--type", "audit")
    assert code == 0 and "off requested" in out
    code, out = await cli(plane, capsys, "instance", "delete", "cli-vm")
    assert code == 0


async def test_errors_are_reported_with_code_and_exit_1(
    plane: ControlPlane, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """A refused request prints the status code and message and exits 1."""
    code, out = await cli(plane, capsys, "instance", "create", "bad", "--disk", "size=1,bus=ide")
    assert code == 1
    assert "INVALID_ARGUMENT" in out and "ide" in out
    code, out = await cli(plane, capsys, "instance", "show", "missing")
    assert code == 1 and "NOT_FOUND" in out


async def test_create_sends_user_data_base64_and_firmware_flags(
    plane: ControlPlane, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """--user-data text reaches the drive decoded; --uefi/--secure-boot give a q35 machine."""
    code, out = await cli(
        plane,
        capsys,
        "--json",
        "instance",
        "create",
        "cli-cd",
        "--memory",
        "256",
        "--user-data",
        "#cloud-config\n",
        "--uefi",
        "--secure-boot",
        "--wait",
    )
    assert code == 0, out
    inst = json.loads(out)
    assert inst["machine_type"] == "q35"
    assert node.disks.drives[inst["uuid"]]["openstack/latest/user_data"] == b"#cloud-config\n"
    code, out = await cli(
        plane, capsys, "instance", "create", "cli-sb", "--memory", "256", "--secure-boot"
    )
    assert code == 1 and "secure boot requires UEFI be enabled" in out


async def test_metadata_verbs(
    plane: ControlPlane, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """set-metadata takes JSON (or a plain string); get and delete round trip; bad tags exit 1."""
    code, out = await cli(plane, capsys, "instance", "create", "md-vm", "--memory", "256")
    assert code == 0, out
    code, out = await cli(plane, capsys, "instance", "set-metadata", "md-vm", "tags", '["web"]')
    assert code == 0 and json.loads(out) == {"tags": ["web"]}
    code, out = await cli(plane, capsys, "instance", "set-metadata", "md-vm", "owner", "ann")
    assert code == 0 and json.loads(out) == {"tags": ["web"], "owner": "ann"}
    code, out = await cli(plane, capsys, "instance", "delete-metadata", "md-vm", "owner")
    assert code == 0 and json.loads(out) == {"tags": ["web"]}
    code, out = await cli(plane, capsys, "instance", "get-metadata", "md-vm")
    assert code == 0 and json.loads(out) == {"tags": ["web"]}
    code, out = await cli(plane, capsys, "instance", "set-metadata", "md-vm", "tags", "web")
    assert code == 1 and "INVALID_ARGUMENT" in out and "'tags' must be a JSON list" in out


async def test_networks_interfaces_hot_plug_and_float(
    plane: ControlPlane, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """The CLI creates networks, puts instances on them, hot plugs, floats and cleans up."""
    for argv in (
        ("network", "create", "front", "10.20.0.0/24"),
        ("network", "create", "back", "10.21.0.0/29", "--no-nat"),
    ):
        code, out = await cli(plane, capsys, *argv)
        assert code == 0, out
    code, out = await cli(plane, capsys, "network", "list")
    assert code == 0 and "front" in out and "10.21.0.0/29" in out
    code, out = await cli(
        plane,
        capsys,
        "--json",
        "instance",
        "create",
        "netvm",
        "--memory",
        "256",
        "--network",
        "front@10.20.0.10",
        "--wait",
    )
    assert code == 0, out
    assert json.loads(out)["interfaces"][0]["ipv4"] == "10.20.0.10"
    code, out = await cli(plane, capsys, "instance", "add-interface", "netvm", "back")
    assert code == 0 and "10.21.0." in out, out
    code, out = await cli(plane, capsys, "--json", "instance", "interfaces", "netvm")
    first, second = json.loads(out)
    assert (first["order"], second["order"]) == (0, 1)
    code, out = await cli(plane, capsys, "--json", "interface", "float", first["uuid"])
    assert code == 0 and json.loads(out)["floating"].startswith("192.168.240.")
    code, out = await cli(plane, capsys, "network", "addresses", "front")
    assert "10.20.0.10" in out and "instance" in out and "gateway" in out
    code, out = await cli(plane, capsys, "network", "delete", "front")
    assert code == 1 and "FAILED_PRECONDITION" in out and "netvm" in out


async def test_namespace_verbs_and_a_generated_key_that_works(
    plane: ControlPlane, node: FakeNode, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """Namespace verbs work end to end; a generated key is shown once and logs in."""
    code, out = await cli(plane, capsys, "namespace", "create", "team", "--key-name", "deploy")
    assert code == 0, out
    key = out.split("keep it safe): ")[1].strip()
    code, out = await cli(plane, capsys, "namespace", "list")
    assert code == 0 and out.splitlines()[0].split() == ["name", "state", "keys", "trusts"]
    assert any(line.split()[:3] == ["team", "created", "deploy"] for line in out.splitlines())
    # --key=KEY: a generated key may start with "-", which argparse would take for an option.
    as_team = ["--namespace", "team", f"--key={key}", "instance", "list"]
    code = await asyncio.to_thread(
        main, ["--api", f"127.0.0.1:{plane.port}", "--plaintext", *as_team]
    )
    capsys.readouterr()
    assert code == 0
    (tmp_path / "key").write_text("a-key-from-a-file\n")
    code, out = await cli(
        plane, capsys, "namespace", "add-key", "team", "ci", "--key-file", str(tmp_path / "key")
    )
    assert code == 0 and "ci,deploy" in out and "shown once" not in out
    code, out = await cli(plane, capsys, "namespace", "set-metadata", "team", "owner", "ops")
    assert code == 0
    code, out = await cli(plane, capsys, "--json", "namespace", "get-metadata", "team")
    assert json.loads(out) == {"owner": "ops"}
    code, out = await cli(plane, capsys, "namespace", "delete-key", "team", "deploy")
    assert code == 0 and "deploy" not in out
    code, out = await cli(plane, capsys, "namespace", "delete", "team")
    assert code == 0
    code, out = await cli(plane, capsys, "--json", "namespace", "show", "team")
    assert code != 0 or json.loads(out)["state"] == "deleted"


async def test_create_with_metadata_and_delete_all(
    plane: ControlPlane, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """--metadata KEY=VALUE reaches the instance at create; delete-all wants --confirm."""
    code, out = await cli(
        plane,
        capsys,
        "--json",
        "instance",
        "create",
        "md1",
        "--memory",
        "256",
        "--metadata",
        'affinity={"web": -10}',
        "--metadata",
        "role=web",
    )
    assert code == 0, out
    assert json.loads(out)["metadata"] == {"affinity": {"web": -10}, "role": "web"}
    with pytest.raises(SystemExit, match="--confirm"):
        await cli(plane, capsys, "instance", "delete-all")
    code, out = await cli(plane, capsys, "instance", "delete-all", "--confirm")
    assert code == 0 and "deleted 1 instances" in out


async def test_node_verbs_list_show_disable_enable_drain_and_events(
    plane: ControlPlane, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """The node verbs print the node, steer its state, and refuse what the table refuses."""
    code, out = await cli(plane, capsys, "node", "list")
    assert code == 0 and node.name in out and "created" in out, out
    code, out = await cli(plane, capsys, "node", "show", node.name)
    assert code == 0 and node.name in out, out
    code, out = await cli(plane, capsys, "--json", "node", "disable", node.name)
    assert code == 0 and json.loads(out)["state"] == "disabled", out
    code, out = await cli(plane, capsys, "--json", "node", "enable", node.name)
    assert code == 0 and json.loads(out)["state"] == "created", out
    code, out = await cli(plane, capsys, "node", "drain", node.name)
    assert code == 0, out
    code, out = await cli(plane, capsys, "node", "events", node.name)
    assert code == 0 and "drain requested" in out, out
    code, out = await cli(plane, capsys, "node", "delete", "nope")
    assert code == 1 and "NOT_FOUND" in out, out


async def test_artifact_versions_delete_events_and_blob_list(
    plane: ControlPlane, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """artifact versions/delete-version/max-versions/events/delete/delete-all, blob list/events."""
    for i in range(1, 5):
        image = tmp_path / f"disk{i}.img"
        image.write_bytes(f"version {i}".encode())
        code, out = await cli(plane, capsys, "--json", "artifact", "upload", "img", str(image))
        assert code == 0, out
    art = json.loads(out)
    assert [v["index"] for v in art["versions"]] == [2, 3, 4] and art["max_versions"] == 3
    code, out = await cli(plane, capsys, "artifact", "versions", "upload:img")
    assert code == 0 and out.splitlines()[0].split() == ["index", "blob", "size", "created"]
    assert [line.split()[0] for line in out.splitlines()[1:]] == ["2", "3", "4"]
    code, out = await cli(plane, capsys, "--json", "artifact", "delete-version", "upload:img", "3")
    assert code == 0 and [v["index"] for v in json.loads(out)["versions"]] == [2, 4]
    code, out = await cli(plane, capsys, "--json", "artifact", "max-versions", "upload:img", "1")
    assert code == 0 and [v["index"] for v in json.loads(out)["versions"]] == [4]
    code, out = await cli(plane, capsys, "artifact", "max-versions", "upload:img", "0")
    assert code == 1 and "INVALID_ARGUMENT" in out and "max_versions" in out
    code, out = await cli(plane, capsys, "artifact", "events", "upload:img")
    assert code == 0 and "max versions set to 1" in out and "artifact created" in out
    code, out = await cli(plane, capsys, "--json", "artifact", "share", "upload:img")
    assert code == 0 and json.loads(out)["shared"] is True
    code, out = await cli(plane, capsys, "artifact", "list")
    assert code == 0 and "upload:img" in out and "1 of 1" in out and "shared" in out
    code, out = await cli(plane, capsys, "--json", "artifact", "unshare", "upload:img")
    assert code == 0 and json.loads(out)["shared"] is False

    code, out = await cli(plane, capsys, "blob", "list")
    assert code == 0 and out.splitlines()[0].split()[:3] == ["uuid", "size", "references"]
    blob = art["blob_uuid"]
    assert blob in out
    code, out = await cli(plane, capsys, "blob", "events", blob)
    assert code == 0 and "blob created" in out

    code, out = await cli(plane, capsys, "--json", "artifact", "delete", "upload:img")
    assert code == 0 and json.loads(out)["state"] == "deleted"
    code, out = await cli(plane, capsys, "--json", "blob", "show", blob)
    assert code == 0 and json.loads(out)["state"] == "deleted"
    code, out = await cli(plane, capsys, "artifact", "show", "upload:img")
    assert code == 1 and "NOT_FOUND" in out

    image = tmp_path / "other.img"
    image.write_bytes(b"other")
    await cli(plane, capsys, "artifact", "upload", "other", str(image))
    with pytest.raises(SystemExit, match="--confirm"):
        await cli(plane, capsys, "artifact", "delete-all")
    code, out = await cli(plane, capsys, "artifact", "delete-all", "--confirm")
    assert code == 0 and "upload:other" in out and "deleted" in out
    code, out = await cli(plane, capsys, "--json", "artifact", "list")
    assert code == 0 and json.loads(out) == []


async def test_list_reads_every_page_and_prints_oldest_first(
    plane: ControlPlane,
    node: FakeNode,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """`instance list` and delete-all go through List pages (here of 2) and miss none."""
    monkeypatch.setattr(client_api, "PAGE_SIZE", 2)
    calls: list[int] = []
    real = client_api.Client.instance_pages

    def counted(self: client_api.Client, *args: object, **kwargs: object) -> object:
        for page in real(self, *args, **kwargs):  # type: ignore[arg-type]
            calls.append(len(page))
            yield page

    monkeypatch.setattr(client_api.Client, "instance_pages", counted)
    names = [f"pg{i}" for i in range(5)]
    for name in names:
        code, out = await cli(plane, capsys, "instance", "create", name, "--memory", "256")
        assert code == 0, out
    code, out = await cli(plane, capsys, "--json", "instance", "list")
    assert code == 0 and [i["spec"]["name"] for i in json.loads(out)] == names
    assert calls == [2, 2, 1]
    code, out = await cli(plane, capsys, "--json", "instance", "delete-all", "--confirm")
    assert code == 0 and len(json.loads(out)) == 5


def test_a_reader_that_goes_away_ends_the_cli_without_a_traceback(tmp_path: Path) -> None:
    """`minicloud --json ... | grep -q x` closes the pipe early: exit quietly, no traceback."""
    import subprocess
    import sys

    script = (
        "import sys, json; from client import cli; "
        "cli.run = lambda args, client: [{'n': i} for i in range(200000)]; "
        "sys.exit(cli.main(['--plaintext', '--json', 'instance', 'list']))"
    )
    done = subprocess.run(
        f'{sys.executable} -c "{script}" | head -c 10 >/dev/null',
        shell=True,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "Traceback" not in done.stderr, done.stderr


async def test_snapshot_and_snapshots(
    plane: ControlPlane, node: FakeNode, capsys: pytest.CaptureFixture[str]
) -> None:
    """instance snapshot prints each disk's artifact and consistency; snapshots lists them."""
    code, out = await cli(plane, capsys, "instance", "create", "snap-vm", "--wait")
    assert code == 0, out
    code, out = await cli(
        plane, capsys, "instance", "snapshot", "snap-vm", "--device", "vda", "--label", "gold"
    )
    assert code == 0, out
    assert "sf://snapshot/" in out and "crash-consistent (the instance has no agent channel)" in out
    code, out = await cli(plane, capsys, "--json", "instance", "snapshots", "snap-vm")
    assert code == 0 and [s["index"] for s in json.loads(out)] == [1]
    code, out = await cli(plane, capsys, "instance", "snapshot", "snap-vm", "--device", "vdz")
    assert code == 1 and "NOT_FOUND" in out
