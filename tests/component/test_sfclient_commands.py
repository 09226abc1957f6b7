"""Every sf-client 0.8.3 command, as docs/sfclient.md lists it, run for real.

``ROWS`` is the one table: each command of the installed sf-client, typed as
a user would, with what it does against minicloud (works, works partly, not
served on purpose, not yet, or a bug of the client itself) and a one-line
note. docs/sfclient.md shows exactly these rows; a test holds it to them, and
another holds the table to the client's own click groups (a command added or
gone in another client version fails it).

The run: a control plane, a REST gateway over HTTPS (the client trusts the
cluster's CA through ``REQUESTS_CA_BUNDLE``) and fake-hypervisor node agents,
all in this module's event loop; the objects the commands name are made once
with sf-client itself, then each row's command runs as a subprocess, in
batches by ``order`` (rows of one batch are independent and run a few at a
time). A row that works must exit 0, print what ``expect`` says and, where
given, show its effect (``then``) or leave a file (``creates``); one that
fails must exit non-zero with its message and no Python traceback, unless the
client itself crashes (``crash``: the exception it raises, whatever the
server). Through it all the gateway must answer no 5xx.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import re
import shlex
import shutil
import socket
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import click
import pytest
import pytest_asyncio
from shakenfist_client.main import cli

from client.cadir import CaDir
from common.tlsfiles import TLSFiles
from controlplane.app import ControlPlane, start
from gateway.app import serve
from gateway.metrics import METRICS
from gateway.settings import GatewaySettings
from tests.component.conftest import SYSTEM_KEY, FakeNode, plane_settings, start_fake_node
from tests.component.test_agent_ops import GuestAgent
from tests.component.test_gateway import Rest, start_gateway

SF_CLIENT = Path(sys.executable).parent / "sf-client"
DOC = Path(__file__).resolve().parents[2] / "docs" / "sfclient.md"
STATUSES = ("works", "partly", "not served", "not yet", "client bug")


@dataclass(frozen=True)
class Row:
    """One sf-client command line and what it does against minicloud."""

    # The arguments after ``sf-client``; UPPERCASE words are filled in by the test.
    command: str
    status: str
    note: str
    # A substring the output must hold ("re:..." for a regular expression).
    expect: str = ""
    # Batch: 0 makes, 1 uses, 2 undoes what 1 did, 3 deletes.
    order: int = 1
    # A command showing the effect, and what its output must (or, with lacks, must not) hold.
    then: str = ""
    then_expect: str = ""
    lacks: bool = False
    # A file (in the working folder) the command must leave, not empty.
    creates: str = ""
    # The exception sf-client itself raises (its traceback's last line starts so).
    crash: str = ""
    # Another way of typing a command listed already (not counted on its own).
    variant: bool = False

    @property
    def name(self) -> str:
        """The command's group and name, as sf-client's click groups hold it."""
        words = [w for w in shlex.split(self.command) if not w.startswith("--")]
        return " ".join(
            words[:1] if words[0] == "version" else words[: 3 if words[0] == "admin" else 2]
        )


# The table, one row a line (the file is exempt from the line length for it).
# ruff: noqa: E501
# fmt: off
ROWS: tuple[Row, ...] = (
    # admin
    Row("admin lock list", "not served", "Shaken Fist's cluster-internal etcd locks, an operator's debugging aid; minicloud takes no such locks", "GET /admin/locks is not implemented"),
    # artifact
    Row("artifact cache http://127.0.0.1:9/disk.img", "works", "answered at once, fetched in the background (docs/artifacts.md); loopback, private and the cluster's own addresses are refused by default, so this one ends in state error", then="artifact list", then_expect="disk.img"),
    Row("--json artifact delete upload:doomed", "works", "answers the deleted artifact; blobs no longer used are freed", '"state": "deleted"', order=3),
    Row("artifact delete-metadata upload:img owner", "client bug", "sf-client 0.8.3 sends it to the instance metadata route, so it is an instance not found; the library's `delete_artifact_metadata_item` works", "not found"),
    Row("artifact delete-version upload:img 1", "works", "its blob is freed when no version or instance uses it", order=3, then="artifact show upload:img", then_expect="number of versions       : 1"),
    Row("artifact download upload:img img.copy", "works", "with a progress bar", "Download complete", creates="img.copy"),
    Row("artifact events upload:img", "works", "newest first", "created"),
    Row("artifact list", "works", "the namespace's artifacts and the shared ones", "sf://upload/system/img"),
    Row("artifact max-versions upload:img 5", "works", "3 kept by default", then="artifact show upload:img", then_expect="maximum versions         : 5"),
    Row("artifact set-metadata upload:img owner ops", "client bug", "sent to the instance metadata route (sf-client 0.8.3), an instance not found; the library's `set_artifact_metadata_item` works", "not found"),
    Row("artifact share upload:img", "works", "system artifacts only: every namespace may then use it", then="--json artifact show upload:img", then_expect='"shared": true'),
    Row("artifact show upload:img", "works", "by UUID or `TYPE:NAME`, with its versions", "maximum versions"),
    Row("artifact unshare upload:img", "works", "no other namespace sees it any more", order=2, then="--json artifact show upload:img", then_expect='"shared": false'),
    Row("artifact upload img2 disk.img", "works", "reuses a blob with the same sha512", "Created artifact", order=0),
    Row("artifact versions upload:img", "works", "as JSON, oldest first", '"index": 2'),
    # backup
    Row("backup create backup.json", "works", "the artifact and blob list, and every blob into `./blobs`", "Created summary at backup.json", creates="backup.json"),
    # blob
    Row("blob delete-metadata BLOB_UUID owner", "client bug", "sent to the instance metadata route (sf-client 0.8.3); the library's `delete_blob_metadata_item` works", "not found"),
    Row("blob events BLOB_UUID", "works", "newest first", "re:\\d{4}-\\d\\d-\\d\\d"),
    Row("blob list", "partly", "works; `--audit` fails in the client (below)", "BLOB_UUID"),
    Row("blob list --audit", "client bug", "reads artifact fields (`blobs`) from each blob: a KeyError against Shaken Fist too", crash="KeyError", variant=True),
    Row("blob set-metadata BLOB_UUID owner ops", "client bug", "sent to the instance metadata route (sf-client 0.8.3); the library's `set_blob_metadata_item` works", "not found"),
    Row("blob sha512 SHA512", "works", "the blob with that sha512, if any", "BLOB_UUID"),
    Row("blob show BLOB_UUID", "works", "size, sha512, reference count", "reference count"),
    # instance
    Row("instance add-interface web -n net1", "works", "hot plug into a running instance", then="--json instance show web", then_expect='"order": 1'),
    Row("instance await agentvm", "client bug", "the CLI calls `instance_await_agent_ready`, which the 0.8.3 library lacks (it has `await_agent_ready`)", crash="AttributeError"),
    Row("instance consoledata web", "works", "the serial console log", "boot complete"),
    Row("instance consoledelete web", "works", "clears the console log", order=2, then="instance consoledata web", then_expect="boot complete", lacks=True),
    Row("instance create web2 1 256 -d 1@debian:11 -n net1 -m role=web -p node1", "works", "disks, networks, metadata, side channels, UEFI, config drive; `-p` (placement) for system only", "state         : created", order=0),
    Row("instance delete doomed", "works", "by UUID or name", order=3, then="instance list", then_expect="doomed", lacks=True),
    Row("instance delete-all --confirm --namespace crowd", "works", "system must name the namespace, as with Shaken Fist", then="instance list", then_expect="crowdvm", lacks=True),
    Row("instance delete-metadata web role", "works", "one key; the others stay", order=2, then="--json instance show web", then_expect='"role"', lacks=True),
    Row("instance download agentvm WORKDIR/uploaded.txt back.txt", "works", "a guest file through the in-guest agent", order=2, creates="back.txt"),
    Row("instance events web", "works", "newest first; `-t TYPE`, `-l LIMIT`", "schedule complete"),
    Row("instance execute agentvm 'echo hello'", "works", "through the in-guest agent (`sf-agent` side channel)", "hello"),
    Row("instance list", "works", "`-a` with failed and deleted ones too", "web"),
    Row("instance pause web", "works", "and `unpause`", then="instance show web", then_expect="power state   : paused"),
    Row("instance poweroff db", "works", "and `poweron`", then="instance show db", then_expect="power state   : off"),
    Row("instance poweron db", "works", "the node starts it again", order=2, then="instance show db", then_expect="power state   : on"),
    Row("instance reboot spare", "works", "soft, or `--hard`", then="instance events spare", then_expect="reboot"),
    Row("instance screenshot web shot.png", "works", "the display, into a file", creates="shot.png"),
    Row("instance set-metadata web role web", "works", "`affinity` and `tags` values are sent as JSON", then="--json instance show web", then_expect='"role": "web"'),
    Row("instance show web", "works", "`-a` with agent operations too, `-s` with snapshots", "power state"),
    Row("instance show -s web", "works", "with the instance's snapshots", "power state", variant=True),
    Row("instance snapshot web", "works", "the first disk (or `--all`, `--device`), frozen by the guest's agent while it runs; an artifact version of `snapshot:UUID/vda`", then="artifact list", then_expect="snapshot"),
    Row("instance unpause web", "works", "back to running", order=2, then="instance show web", then_expect="power state   : on"),
    Row("instance upload agentvm file.txt WORKDIR/uploaded.txt", "works", "a file into the guest through the in-guest agent, as an artifact first", "Created artifact", creates="uploaded.txt"),
    Row("instance vdiconsole web --viewer /bin/cat", "works", "fetches the .vv file (direct to the hypervisor: the Kerbside proxy is not served) and starts the viewer on it", "[virt-viewer]"),
    Row("instance vdiconsolefile web", "works", "the .vv file, with the display's password", "type=spice"),
    # interface
    Row("interface defloat INTERFACE_UUID", "works", "the floating address goes back to the pool", order=2, then="interface show INTERFACE_UUID", then_expect="floating: None"),
    Row("interface delete-metadata INTERFACE_UUID role", "works", "one key; the others stay", order=2, then="interface show INTERFACE_UUID", then_expect="role", lacks=True),
    Row("interface float INTERFACE_UUID", "works", "a floating address from the cluster's pool", then="interface show INTERFACE_UUID", then_expect="re:floating: \\d+\\.\\d+"),
    Row("interface set-metadata INTERFACE_UUID role web", "works", "one key", then="interface show INTERFACE_UUID", then_expect="re:role\\s*: web"),
    Row("interface show INTERFACE_UUID", "works", "its network, MAC, addresses and metadata", "macaddr"),
    # label
    Row("label update golden BLOB_UUID", "works", "a disk base may then be `label:golden`", order=0, then="artifact show label:golden", then_expect="BLOB_UUID"),
    # namespace
    Row("namespace add-key team ci ci-secret-key", "works", "system, or the namespace's own key", then="--json namespace show team", then_expect='"ci"'),
    Row("namespace add-trust team crowd", "works", "crowd then sees team's artifacts (read only)", then="--json namespace show team", then_expect='"crowd"'),
    Row("namespace clean --confirm --namespace victims", "works", "its instances, networks and artifacts", then="network list", then_expect="vnet", lacks=True),
    Row("namespace create team2", "works", "system only; no key yet (`add-key`)", order=0, then="namespace list", then_expect="team2"),
    Row("namespace delete doomed-ns", "works", "refused while it holds instances", order=3, then="namespace list", then_expect="doomed-ns", lacks=True),
    Row("namespace delete-key team ci", "works", "its tokens stop working", order=2, then="--json namespace show team", then_expect='"ci"', lacks=True),
    Row("namespace delete-metadata team owner", "works", "one key; the others stay", order=2, then="namespace get-metadata team", then_expect="owner", lacks=True),
    Row("namespace get-metadata team", "works", "every key", "tier"),
    Row("namespace list", "works", "system sees all, another namespace itself", "team"),
    Row("namespace remove-trust team crowd", "works", "crowd no longer sees team's artifacts", order=2, then="--json namespace show team", then_expect='"crowd"', lacks=True),
    Row("namespace set-metadata team owner ops", "works", "system, or the namespace's own key", then="namespace get-metadata team", then_expect="owner"),
    Row("namespace show team", "works", "its keys' names and metadata", "team"),
    Row("namespace update-key team deploy new-team-key", "works", "the old key's tokens stop working"),
    # network
    Row("network add-routed net1", "not yet", "routed addresses (in no issue yet); the client refuses first, `route-addresses` not being advertised", crash="shakenfist_client.apiclient.IncapableException: The API server version you are talking to does not support routing addresses"),
    Row("network addresses net1", "partly", "works; `--simple` fails in the client (below)", "gateway"),
    Row("--simple network addresses net1", "client bug", "joins the `user` of an address no object holds, null as from Shaken Fist: a TypeError", crash="TypeError", variant=True),
    Row("network create net2 10.11.0.0/24 --dns", "works", "DHCP, NAT, and DNS for its instances (`NAME.NAMESPACE.minicloud`)", "provide DNS     : True", order=0),
    Row("network delete doomed-net", "works", "refused while instances use it", order=3, then="network list", then_expect="doomed-net", lacks=True),
    Row("network delete-all --confirm --namespace crowd", "works", "system must name the namespace", order=3, then="network list", then_expect="crowdnet", lacks=True),
    Row("network delete-metadata net1 role", "works", "one key; the others stay", order=2, then="--json network show net1", then_expect='"role"', lacks=True),
    Row("network delete-routed net1 192.168.240.10", "not yet", "routed addresses (in no issue yet); refused by the client first", crash="shakenfist_client.apiclient.IncapableException: The API server version you are talking to does not support routing addresses"),
    Row("network events net1", "works", "newest first", "create requested"),
    Row("network instances net1", "works", "the interfaces on it", "re:10\\.9\\.0\\.\\d+"),
    Row("network list", "works", "`-a` with failed and deleted ones too", "net1"),
    Row("network ping net1 10.9.0.1", "not yet", "ping from the network's namespace (in no issue yet; docs/networking.md)", "GET /networks/{network_ref}/ping/{address} is not implemented"),
    Row("network set-metadata net1 role front", "works", "one key", then="--json network show net1", then_expect='"role": "front"'),
    Row("network show net1", "works", "by UUID or name", "10.9.0.0/24"),
    # node
    Row("node cpuhogs", "not served", "process metrics of Shaken Fist's daemons (nodes export Prometheus metrics instead); the client's fallback reads `resources` events, none here: an IndexError", crash="IndexError"),
    Row("node delete node2", "works", "system only; a missing node, or one without instances", order=3, then="node show node2", then_expect="re:state\\s+: deleted"),
    Row("node events node1", "works", "system only", "node connected"),
    Row("node list", "works", "system only", "node1"),
    Row("node resources node1", "not yet", "nodes record no `resources` events (node agent and control plane work, in no issue yet): the client's IndexError", crash="IndexError"),
    Row("node show node1", "works", "system only", "hypervisor               : True"),
    # version
    Row("version", "works", "the client's own version; asks nothing", "Shaken Fist/0.8.3"),
)
# fmt: on


def client_commands() -> Iterator[str]:
    """Every command of the installed sf-client, as "group name"."""

    def walk(command: click.Command, path: tuple[str, ...]) -> Iterator[str]:
        if isinstance(command, click.Group):
            for name, sub in command.commands.items():
                yield from walk(sub, (*path, name))
        else:
            yield " ".join(path)

    yield from walk(cli, ())


def doc_line(row: Row) -> str:
    """The row as docs/sfclient.md shows it."""
    command = f"`sf-client {row.command}`"
    return f"| {command} | {row.status} | {row.note} |"


def test_the_table_lists_every_command_of_the_client_once() -> None:
    """Each sf-client command has exactly one row that is no variant, and no row names another."""
    primary = [row.name for row in ROWS if not row.variant]
    assert sorted(primary) == sorted(client_commands())
    assert {row.name for row in ROWS} <= set(primary)
    assert {row.status for row in ROWS} <= set(STATUSES)
    for row in ROWS:
        failing = row.status not in ("works", "partly")
        assert failing == bool(
            row.crash or row.status == "client bug" or "not implemented" in row.expect
        ), row


def test_the_doc_shows_the_table_as_it_is() -> None:
    """docs/sfclient.md holds one line per row, as the row says, and no other command lines."""
    doc = DOC.read_text()
    lines = [line for line in doc.splitlines() if line.startswith("| `sf-client ")]
    assert lines == [line for line in lines if line in {doc_line(row) for row in ROWS}]
    for row in ROWS:
        assert doc_line(row) in doc, row.command
    assert len(lines) == len(ROWS)
    primary = [row for row in ROWS if not row.variant]
    counts = ", ".join(
        f"{sum(row.status == status for row in primary)} {status}" for status in STATUSES
    )
    assert f"Of the client's {len(primary)} commands: {counts}." in doc


@dataclass
class Stack:
    """The running cluster, the client's environment, and the objects the rows name."""

    env: dict[str, str]
    work: Path
    values: dict[str, str]
    gateway: Any

    def fill(self, text: str) -> str:
        """text with its placeholders replaced."""
        for word, value in self.values.items():
            text = text.replace(word, value)
        return text

    async def sf(self, command: str) -> tuple[int, str]:
        """Run ``sf-client COMMAND`` (placeholders filled); its exit code and output."""
        proc = await asyncio.create_subprocess_exec(
            str(SF_CLIENT),
            *shlex.split(self.fill(command)),
            env=self.env,
            cwd=self.work,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert proc.returncode is not None
        return proc.returncode, out.decode(errors="replace")

    async def ok(self, command: str) -> str:
        """Run a command that must work; its output."""
        code, out = await self.sf(command)
        assert code == 0 and "Traceback" not in out, (command, out)
        return out

    async def uuid(self, command: str, path: str = "uuid") -> str:
        """A value from the JSON a command prints (``path``: keys and indexes, dotted)."""
        value: Any = json.loads(await self.ok(f"--json {command}"))
        for key in path.split("."):
            value = value[int(key)] if key.isdigit() else value[key]
        return str(value)


NOW = datetime.datetime.now(datetime.UTC)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def stack() -> AsyncIterator[Stack]:
    """A TLS control plane, an HTTPS gateway, two fake nodes, and the objects the rows use."""
    tmp = Path(tempfile.mkdtemp(prefix="sfc-"))
    ca = CaDir(tmp / "ca")
    ca.init(NOW)
    for name in ("controlplane", "gateway"):
        ca.issue("server", name, NOW, sans=("127.0.0.1",))
    issued, ca_file = ca.issued, str(ca.path / "ca.crt")

    def files(name: str) -> TLSFiles:
        return TLSFiles(str(issued / f"{name}.crt"), str(issued / f"{name}.key"), ca_file)

    settings = dataclasses.replace(
        plane_settings(tmp / "cp"), tls=files("controlplane"), node_listen="127.0.0.1:0"
    )
    plane = await start(settings)
    nodes: list[FakeNode] = []
    # node2 has no room for any instance: it stays empty, to be deleted.
    for name, memory in (("node1", 16384), ("node2", 64)):
        ca.issue("node", name, NOW)
        target = f"127.0.0.1:{plane.node_port}"
        nodes.append(await start_fake_node(target, name, memory_mb=memory, tls=files(name).read()))
    runner = await serve(
        GatewaySettings(
            listen="127.0.0.1:0",
            api=f"127.0.0.1:{plane.port}",
            max_chunk_bytes=1 << 20,
            metrics_listen="off",
            tls=files("gateway"),
        )
    )
    host, port = runner.addresses[0][:2]
    work = tmp / "work"
    work.mkdir()
    (work / "disk.img").write_bytes(b"a small disk image\n" * 500)
    (work / "file.txt").write_text("a file for the guest\n")
    env = {
        **os.environ,
        "SHAKENFIST_API_URL": f"https://{host}:{port}",
        "SHAKENFIST_NAMESPACE": "system",
        "SHAKENFIST_KEY": SYSTEM_KEY,
        "SHAKENFIST_ASYNC": "pause",
        "REQUESTS_CA_BUNDLE": ca_file,
        "HOME": str(tmp),
    }
    stack = Stack(env, work, {"WORKDIR": str(work)}, runner.app)
    guest = None
    try:
        guest = await make_objects(stack, nodes[0])
        yield stack
    finally:
        if guest is not None:
            guest.stop()
        await runner.cleanup()
        for node in nodes:
            await node.close()
        await plane.stop(0)
        shutil.rmtree(tmp, ignore_errors=True)


async def make_objects(stack: Stack, node: FakeNode) -> GuestAgent:
    """The namespaces, networks, instances and artifacts the rows name; the guest agent."""
    ok = stack.ok
    disk = "-d 1@debian:11"
    await asyncio.gather(
        *(ok(f"namespace create {ns}") for ns in ("team", "crowd", "victims", "doomed-ns")),
        ok("network create net1 10.9.0.0/24"),
        ok("network create doomed-net 10.12.0.0/24"),
        ok("artifact upload img disk.img"),
        ok("artifact upload doomed file.txt"),
    )
    (stack.work / "disk.img").write_bytes(b"its second version\n" * 500)
    await asyncio.gather(
        ok("artifact upload img disk.img"),
        ok("namespace add-key team deploy team-key-1"),
        ok("namespace set-metadata team tier gold"),
        ok("network create crowdnet 10.13.0.0/24 --namespace crowd"),
        ok("network create vnet 10.14.0.0/24 --namespace victims"),
        ok("artifact upload vimg file.txt --namespace victims"),
        ok(f"instance create web 1 256 {disk} -n net1"),
        ok(f"instance create db 1 256 {disk}"),
        ok(f"instance create spare 1 256 {disk}"),
        ok(f"instance create doomed 1 256 {disk}"),
        ok(f"instance create agentvm 1 256 {disk} -s sf-agent -s sf-agent2"),
    )
    await asyncio.gather(
        ok(f"instance create crowdvm 1 256 {disk} -n crowdnet --namespace crowd"),
        ok(f"instance create vvm 1 256 {disk} -n vnet --namespace victims"),
    )
    blob = await stack.uuid("artifact show upload:img", "blob_uuid")
    stack.values.update(
        BLOB_UUID=blob,
        SHA512=await stack.uuid(f"blob show {blob}", "sha512"),
        INTERFACE_UUID=await stack.uuid("instance show web", "network_interfaces.0.uuid"),
    )
    guest = GuestAgent(node.agent_socket(await stack.uuid("instance show agentvm")))
    guest.start()
    deadline = time.monotonic() + 30
    while '"agent_state": "ready"' not in await ok("--json instance show agentvm"):
        assert time.monotonic() < deadline, "the guest agent never became ready"
        await asyncio.sleep(0.2)
    return guest


def holds(text: str, wanted: str) -> bool:
    """Whether text holds wanted (a substring, or a regular expression after "re:")."""
    if wanted.startswith("re:"):
        return re.search(wanted[3:], text) is not None
    return wanted in text


async def failure(stack: Stack, row: Row) -> str:
    """What is wrong with the row's command against the stack ("" if nothing)."""
    if row.lacks:  # what the command is to remove is there before it
        before = await stack.ok(row.then)
        if not holds(before, stack.fill(row.then_expect)):
            return f"before it, {row.then!r} lacks {row.then_expect!r} already:\n{before}"
    started = time.monotonic()
    code, out = await stack.sf(row.command)
    took = f" ({time.monotonic() - started:.1f} s)"
    expect = stack.fill(row.expect)
    if row.crash:
        last = out.strip().splitlines()[-1] if out.strip() else ""
        if code == 0 or "Traceback" not in out or not last.startswith(row.crash):
            return f"expected the client's own {row.crash}, got {code}{took}:\n{out}"
        return ""
    if "Traceback" in out:
        return f"a traceback{took}:\n{out}"
    if row.status in ("works", "partly"):
        if code != 0:
            return f"exit {code}{took}:\n{out}"
    elif code == 0:
        return f"exit 0, but it should fail{took}:\n{out}"
    if expect and not holds(out, expect):
        return f"no {expect!r} in the output{took}:\n{out}"
    if row.creates and not (stack.work / row.creates).stat().st_size:
        return f"{row.creates} is empty"
    if row.then:
        wanted = stack.fill(row.then_expect)
        deadline = time.monotonic() + 10
        while True:
            shown = await stack.ok(row.then)
            if holds(shown, wanted) != row.lacks:
                break
            if time.monotonic() > deadline:
                return f"then {row.then!r} {'holds' if row.lacks else 'lacks'} {wanted!r}:\n{shown}"
            await asyncio.sleep(0.2)
    return ""


@pytest.mark.asyncio(loop_scope="module")
async def test_every_command_does_what_the_table_says(stack: Stack) -> None:
    """Each row's command, batch by batch, a few at a time: as the table says, and no 5xx."""
    problems: list[str] = []
    limit = asyncio.Semaphore(3)

    async def one(row: Row) -> None:
        async with limit:
            found = await failure(stack, row)
        if found:
            problems.append(f"sf-client {row.command}: {found}")

    for order in sorted({row.order for row in ROWS}):
        await asyncio.gather(*(one(row) for row in ROWS if row.order == order))
    exposition = (await stack.gateway[METRICS].registry.render()).decode()
    answered_5xx = re.findall(
        r'^minicloud_http_requests_total\{.*code="5\d\d".*$', exposition, re.M
    )
    assert not problems and not answered_5xx, "\n\n".join(problems + answered_5xx)


async def test_a_download_the_client_ends_early_is_no_gateway_failure(plane: ControlPlane) -> None:
    """A client hanging up mid-download (sf-client stops at the size it expects) is no 500."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    try:
        async with aiohttp.ClientSession() as session:
            rest = Rest(session, url)
            await rest.login()
            _, upload = await rest.call("POST", "/upload")
            for _ in range(8):  # 8 MiB: more than the gateway's socket can hold unread
                await rest.call("POST", f"/upload/{upload['uuid']}", raw=bytes(1 << 20))
            _, art = await rest.call(
                "POST", "/artifacts/upload/big", {"upload_uuid": upload["uuid"]}
            )
            sock = socket.socket()
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.setblocking(False)
            host, port = runner.addresses[0][:2]
            await asyncio.get_running_loop().sock_connect(sock, (host, port))
            reader, writer = await asyncio.open_connection(sock=sock)
            path = f"/blobs/{art['blob_uuid']}/data"
            writer.write(
                f"GET {path} HTTP/1.1\r\nHost: x\r\n"
                f"Authorization: Bearer {rest.token}\r\n\r\n".encode()
            )
            assert (await reader.readline()).startswith(b"HTTP/1.1 200")
            writer.close()
            metrics = runner.app[METRICS]
            deadline = time.monotonic() + 10
            counted = r'^minicloud_http_requests_total\{[^}]*route="/blobs/\{uuid\}/data"[^}]*\}'
            while not (
                answered := re.findall(counted, (await metrics.registry.render()).decode(), re.M)
            ):
                assert time.monotonic() < deadline, "the download never ended"
                await asyncio.sleep(0.05)
            assert len(answered) == 1 and 'code="200"' in answered[0], answered
            # and the gateway serves on
            assert (await rest.call("GET", f"/blobs/{art['blob_uuid']}"))[0] == 200
    finally:
        await runner.cleanup()
