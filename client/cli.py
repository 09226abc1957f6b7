"""The `minicloud` command line: instances over the gRPC API.

    minicloud instance create demo --cpus 1 --memory 512 --disk size=2,base=debian:11 --wait
    minicloud instance list
    minicloud instance show demo
    minicloud instance poweroff demo
    minicloud instance events demo --type audit --limit 10
    minicloud instance watch demo
    minicloud instance execute demo "cat /etc/os-release"
    minicloud instance copy-to demo ./notes.txt /tmp/notes.txt
    minicloud instance copy-from demo /etc/hostname ./hostname
    minicloud instance agentops demo --all
    minicloud instance console demo          # interactive serial console; Ctrl-] detaches
    minicloud instance consoledata demo 2000 ; minicloud instance consoledelete demo
    minicloud instance screenshot demo ./screen.png ; minicloud instance vdiconsolefile demo
    minicloud blob upload ./disk.img ; minicloud blob download UUID ./copy.img
    minicloud artifact upload myimage ./disk.qcow2   # then: --disk size=10,base=sf://upload/system/myimage
    minicloud artifact versions upload:myimage ; minicloud artifact delete upload:myimage
    minicloud artifact cache https://example.com/debian.qcow2 --name debian   # progress bar
    minicloud instance set-metadata demo tags '["web"]'   # also get-metadata, delete-metadata
    minicloud instance delete demo ; minicloud instance delete-all --confirm
    minicloud instance create web1 --metadata affinity='{"web": -10}'
    minicloud namespace create team --key-name deploy   # prints the new key once
    minicloud namespace list ; minicloud namespace add-key team ci --key-file ./key.txt
    minicloud node list ; minicloud node show NAME ; minicloud node disable NAME   # system only
    minicloud instance create demo --disk size=2,base=debian:11 --node node2   # system only
    minicloud instance move demo --node node2   # a stopped instance, system namespace only
    minicloud instance snapshot demo --device vda --label golden   # then: base=label:golden
    minicloud instance snapshots demo           # the kept versions of its snapshots

The control plane is MINICLOUD_API (default 127.0.0.1:13100; several control
planes as a comma-separated list, tried in turn when one fails), the namespace
MINICLOUD_NAMESPACE (default system) and its key MINICLOUD_KEY; --api,
--namespace and --key override them. The connection is TLS, checked against
the cluster's CA certificate MINICLOUD_TLS_CA (--ca-file); --plaintext (or
MINICLOUD_PLAINTEXT=1) talks to a control plane that runs without TLS.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import hashlib
import json
import os
import queue
import sys
import termios
import threading
import time
import tty
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc

from client import table
from client.api import Client, JsonDict
from client.netcli import add_network_nouns, parse_network, render_network, run_network
from client.nodecli import add_node_noun, render_node, run_node
from client.nscli import add_namespace_noun, render_namespace, run_namespace
from client.progress import Progress

POWER_COMMANDS = {
    "poweron": "on",
    "poweroff": "off",
    "pause": "pause",
    "unpause": "unpause",
}


def parse_disk(text: str) -> JsonDict:
    """A --disk value: size=GB,base=REF,bus=BUS,type=TYPE (size alone also works)."""
    disk: JsonDict = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            key, value = "size", key
        key = {"size": "size_gb"}.get(key, key)
        if key not in ("size_gb", "base", "bus", "type"):
            raise argparse.ArgumentTypeError(f"unknown disk field {key!r}")
        disk[key] = int(value) if key == "size_gb" else value
    return disk


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="minicloud", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--api", default=os.environ.get("MINICLOUD_API", "127.0.0.1:13100"))
    parser.add_argument("--namespace", default=os.environ.get("MINICLOUD_NAMESPACE", "system"))
    parser.add_argument(
        "--key", dest="auth_key", default=os.environ.get("MINICLOUD_KEY", ""), help="namespace key"
    )
    parser.add_argument(
        "--ca-file",
        default=os.environ.get("MINICLOUD_TLS_CA", ""),
        help="the cluster's CA certificate (default: the system's roots)",
    )
    parser.add_argument(
        "--plaintext",
        action="store_true",
        default=os.environ.get("MINICLOUD_PLAINTEXT", "").lower() in ("1", "true", "yes", "on"),
        help="no TLS (a control plane run with MINICLOUD_PLAINTEXT=1)",
    )
    parser.add_argument("--json", action="store_true", help="print JSON")
    top = parser.add_subparsers(dest="noun", required=True)
    inst = top.add_parser("instance", help="manage instances").add_subparsers(
        dest="verb", required=True
    )
    create = inst.add_parser("create", help="create an instance")
    create.add_argument("name")
    create.add_argument("--cpus", type=int, default=1)
    create.add_argument("--memory", type=int, default=1024, help="MiB")
    create.add_argument(
        "--disk",
        type=parse_disk,
        action="append",
        default=[],
        help="size=GB,base=REF,bus=BUS,type=TYPE (repeatable)",
    )
    create.add_argument(
        "--network",
        type=parse_network,
        action="append",
        default=[],
        help="NET[@IP] or network_uuid=NET,address=IP,macaddress=MAC,model=M,float=true",
    )
    create.add_argument("--side-channel", action="append", default=[])
    create.add_argument("--video", default="", help="model,memory_kib,vdi e.g. cirrus,16384,vnc")
    create.add_argument("--ssh-key", default="")
    create.add_argument(
        "--user-data", default="", help="user data text (sent base64-encoded, as the API takes it)"
    )
    create.add_argument("--user-data-file", type=Path, help="user data from a file")
    create.add_argument(
        "--configdrive",
        default="",
        help="openstack-disk (default) or none",
        choices=["", "openstack-disk", "none"],
    )
    create.add_argument("--uefi", action="store_true")
    create.add_argument("--secure-boot", action="store_true", help="needs --uefi")
    create.add_argument(
        "--nvram-template",
        default="",
        help="UEFI variables template: sf://blob/UUID, label:NAME or a node path",
    )
    create.add_argument(
        "--metadata",
        type=metadata_pair,
        action="append",
        default=[],
        help='KEY=VALUE (VALUE is JSON, else a string; repeatable), e.g. affinity={"web": -10}',
    )
    create.add_argument(
        "--node", default="", help="on this node (system namespace only; default: placement)"
    )
    create.add_argument("--wait", action="store_true", help="wait until created (or error)")
    delete_all = inst.add_parser("delete-all", help="delete every instance of the namespace")
    delete_all.add_argument("--confirm", action="store_true", help="required: yes, all of them")
    inst.add_parser("list", help="list instances").add_argument(
        "--all", action="store_true", help="include deleted instances"
    )
    for verb in ("show", "delete", "watch", *POWER_COMMANDS):
        inst.add_parser(verb).add_argument("ref", help="UUID or name")
    move = inst.add_parser("move", help="move a stopped instance to another node (system only)")
    move.add_argument("ref")
    move.add_argument("--node", default="", help="the node (default: placement chooses)")
    snapshot = inst.add_parser(
        "snapshot", help="snapshot the disks into artifacts (sf://snapshot/UUID/DEVICE)"
    )
    snapshot.add_argument("ref")
    snapshot.add_argument("--device", default="", help="one disk, e.g. vda (default: all)")
    snapshot.add_argument("--thin", action="store_true", help="an overlay on the disk's base blob")
    snapshot.add_argument("--label", default="", help="also point this label at it (one disk)")
    inst.add_parser("snapshots", help="list the kept snapshots").add_argument("ref")
    reboot = inst.add_parser("reboot")
    reboot.add_argument("ref")
    reboot.add_argument("--hard", action="store_true")
    execute = inst.add_parser("execute", help="run a command in the instance (its agent)")
    execute.add_argument("ref")
    execute.add_argument("command_line")
    execute.add_argument("--timeout", type=float, default=0)
    copy_to = inst.add_parser("copy-to", help="copy a local file into the instance")
    copy_to.add_argument("ref")
    copy_to.add_argument("local", type=Path)
    copy_to.add_argument("remote")
    copy_to.add_argument("--mode", type=lambda v: int(v, 8), default=None, help="octal")
    copy_from = inst.add_parser("copy-from", help="copy a file out of the instance")
    copy_from.add_argument("ref")
    copy_from.add_argument("remote")
    copy_from.add_argument("local", type=Path)
    agentops = inst.add_parser("agentops", help="list agent operations")
    agentops.add_argument("ref")
    agentops.add_argument("--all", action="store_true")
    inst.add_parser("console", help="attach a terminal to the serial console").add_argument("ref")
    consoledata = inst.add_parser("consoledata", help="print the serial console log's tail")
    consoledata.add_argument("ref")
    consoledata.add_argument("length", type=int, nargs="?", default=0, help="bytes; -1 for all")
    inst.add_parser("consoledelete", help="empty the serial console log").add_argument("ref")
    screenshot = inst.add_parser("screenshot", help="save a PNG of the display")
    screenshot.add_argument("ref")
    screenshot.add_argument("file", type=Path)
    vdi = inst.add_parser("vdiconsolefile", help="write a virt-viewer (.vv) file")
    vdi.add_argument("ref")
    vdi.add_argument("file", type=Path, nargs="?", help="default: print it")
    blob = top.add_parser("blob", help="manage blobs").add_subparsers(dest="verb", required=True)
    blob.add_parser("upload").add_argument("path", type=Path)
    download = blob.add_parser("download")
    download.add_argument("uuid")
    download.add_argument("path", type=Path)
    blob.add_parser("show").add_argument("uuid")
    blob.add_parser("list", help="list live blobs (system: all; else the namespace's)")
    artifact = top.add_parser("artifact", help="manage artifacts").add_subparsers(
        dest="verb", required=True
    )
    art_upload = artifact.add_parser("upload", help="upload a file as an artifact version")
    art_upload.add_argument("name")
    art_upload.add_argument("path", type=Path)
    cache = artifact.add_parser(
        "cache", help="cache an http(s) URL as an upload artifact (progress until it is created)"
    )
    cache.add_argument("url")
    cache.add_argument("--name", default="", help="default: the URL's last path segment")
    cache.add_argument("--shared", action="store_true", help="share it (system only)")
    cache.add_argument("--no-wait", action="store_true", help="answer at once")
    label = artifact.add_parser("label", help="point a label at a blob")
    label.add_argument("name")
    label.add_argument("blob_uuid")
    artifact.add_parser("show").add_argument("ref", help="UUID or TYPE:NAME")
    artifact.add_parser("list")
    artifact.add_parser("delete", help="delete an artifact and its versions").add_argument(
        "ref", help="UUID or TYPE:NAME"
    )
    artifact.add_parser("delete-all", help="delete every artifact of the namespace").add_argument(
        "--confirm", action="store_true"
    )
    artifact.add_parser("versions", help="list an artifact's versions").add_argument("ref")
    delete_version = artifact.add_parser("delete-version", help="delete one version")
    delete_version.add_argument("ref")
    delete_version.add_argument("index", type=int)
    max_versions = artifact.add_parser("max-versions", help="set how many versions are kept")
    max_versions.add_argument("ref")
    max_versions.add_argument("max_versions", type=int)
    for verb in ("share", "unshare"):
        artifact.add_parser(
            verb, help=f"{verb} a system artifact with every namespace"
        ).add_argument("ref")
    for noun in (blob, artifact):
        noun_events = noun.add_parser("events", help="show events, newest first")
        noun_events.add_argument("ref")
        noun_events.add_argument("--type", default="")
        noun_events.add_argument("--limit", type=int, default=100)
    namespace = add_namespace_noun(top)
    nouns = (inst, blob, artifact, namespace, *add_network_nouns(top, inst), add_node_noun(top))
    for noun in nouns:
        add_metadata_verbs(noun)
    events = inst.add_parser("events")
    events.add_argument("ref")
    events.add_argument("--type", default="")
    events.add_argument("--limit", type=int, default=100)
    return parser


def add_metadata_verbs(noun: Any) -> None:
    """set-metadata, get-metadata and delete-metadata under a noun."""
    get = noun.add_parser("get-metadata", help="show the metadata")
    get.add_argument("ref")
    put = noun.add_parser("set-metadata", help="set one key (VALUE is JSON, else a string)")
    put.add_argument("ref")
    put.add_argument("key")
    put.add_argument("value", type=json_or_string)
    delete = noun.add_parser("delete-metadata", help="remove one key")
    delete.add_argument("ref")
    delete.add_argument("key")


def metadata_pair(text: str) -> tuple[str, Any]:
    """A KEY=VALUE metadata item from the command line."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"metadata must be KEY=VALUE, not {text!r}")
    return key, json_or_string(value)


def json_or_string(text: str) -> Any:
    """A metadata value from the command line: JSON if it parses, else the text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def run_metadata(args: argparse.Namespace, client: Client) -> Any:
    """The metadata verbs, for any noun."""
    if args.verb == "get-metadata":
        return client.get_metadata(args.noun, args.ref)
    if args.verb == "set-metadata":
        return client.set_metadata(args.noun, args.ref, args.key, args.value)
    return client.delete_metadata(args.noun, args.ref, args.key)


def video_spec(text: str) -> JsonDict:
    """A --video value as a VideoSpec dict."""
    if not text:
        return {}
    model, _, rest = text.partition(",")
    memory, _, vdi = rest.partition(",")
    return {"model": model, "memory": int(memory or 0), "vdi": vdi}


def show_instance(inst: JsonDict) -> None:
    """Print an instance as aligned key/value lines."""
    spec = inst.get("spec", {})
    rows = [
        ("uuid", inst["uuid"]),
        ("name", spec.get("name")),
        ("namespace", inst["namespace"]),
        ("state", inst["state"]),
        ("power state", inst["power_state"]),
        ("node", inst["node"]),
        ("cpus", spec.get("cpus")),
        ("memory", spec.get("memory")),
        ("error", inst.get("error_message") or ""),
        ("agent state", inst.get("agent_state")),
        ("metadata", json.dumps(inst.get("metadata") or {}, sort_keys=True)),
    ]
    for i, disk in enumerate(spec.get("disks", [])):
        rows.append(
            (
                f"disk {i}",
                f"{disk['size_gb']}GB {disk['base'] or '(blank)'} {disk['bus']} {disk['type']}",
            )
        )
    for key, value in rows:
        print(f"{key:<12} {value}")


def file_chunks(path: Path, size: int = 1024 * 1024) -> Iterator[bytes]:
    """A file's bytes in chunks."""
    with path.open("rb") as src:
        while chunk := src.read(size):
            yield chunk


def upload_file(client: Client, path: Path) -> JsonDict:
    """Upload a file as a blob, reusing a blob with the same content."""
    digest = hashlib.sha512()
    for chunk in file_chunks(path):
        digest.update(chunk)
    existing = client.find_blob(digest.hexdigest())
    if existing is not None:
        print(f"reusing blob {existing['uuid']} with the same content", file=sys.stderr)
        return existing
    progress = Progress(f"upload {path.name}", path.stat().st_size)
    blob = client.upload_blob(file_chunks(path), progress)
    progress.finish()
    return blob


def download_file(client: Client, uuid: str, path: Path) -> None:
    """Download a blob into a file."""
    progress = Progress(f"download {path.name}", int(client.blob(uuid)["size"]))
    with path.open("wb") as out:
        for chunk in client.download_blob(uuid):
            out.write(chunk)
            progress(len(chunk))
    progress.finish()


def finished(client: Client, op: JsonDict) -> JsonDict:
    """Wait for an agent operation; SystemExit with its error if it fails."""
    done = client.wait_operation(op["uuid"])
    if done["state"] != "complete":
        raise SystemExit(f"error: agent operation {done['state']}: {done['error_message']}")
    return done


def run_agent(args: argparse.Namespace, client: Client) -> Any:
    """The commands that go through the in-guest agent."""
    if args.verb == "execute":

        def show(stream: str, data: bytes) -> None:
            out = sys.stderr if stream == "stderr" else sys.stdout
            out.buffer.write(data)
            out.flush()

        op = client.execute_stream(args.ref, args.command_line, show, timeout=args.timeout)
        if op.get("state") != "complete":
            raise SystemExit(f"error: {op.get('error_message') or op.get('state')}")
        result = op["results"]["0"]
        args.exit_code = int(result.get("return-code", 0))
        return op if args.json else None
    if args.verb == "copy-to":
        blob = upload_file(client, args.local)
        mode = args.mode if args.mode is not None else args.local.stat().st_mode & 0o7777
        return finished(client, client.put_blob(args.ref, blob["uuid"], args.remote, mode))
    if args.verb == "copy-from":
        op = finished(client, client.get_file(args.ref, args.remote))
        download_file(client, op["results"]["0"]["content_blob"], args.local)
        return op
    return client.agent_operations(args.ref, include_all=args.all)


DETACH = b"\x1d"  # Ctrl-]


def attach_terminal(client: Client, ref: str) -> None:
    """Relay the terminal to the instance's serial console until Ctrl-] or the end."""
    keys: queue.Queue[bytes | None] = queue.Queue(maxsize=64)
    stdin = sys.stdin.fileno()
    interactive = os.isatty(stdin)

    def keystrokes() -> Iterator[bytes]:
        while (data := keys.get()) is not None:
            yield data

    def read_keys() -> None:
        while True:
            data = os.read(stdin, 4096)
            if not data or DETACH in data:
                if data.split(DETACH)[0]:
                    keys.put(data.split(DETACH)[0])
                keys.put(None)
                output.cancel()
                return
            keys.put(data)

    output = client.attach(ref, keystrokes())
    saved = termios.tcgetattr(stdin) if interactive else None
    print("connected; Ctrl-] detaches", file=sys.stderr)
    try:
        if interactive:
            tty.setraw(stdin)
        threading.Thread(target=read_keys, daemon=True).start()
        for data in output:
            sys.stdout.buffer.write(data)
            sys.stdout.flush()
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.CANCELLED:
            raise
    finally:
        if saved is not None:
            termios.tcsetattr(stdin, termios.TCSADRAIN, saved)
        with contextlib.suppress(queue.Full):
            keys.put_nowait(None)
    print("\r\ndetached", file=sys.stderr)


def run_console(args: argparse.Namespace, client: Client) -> Any:
    """Console commands."""
    if args.verb == "console":
        attach_terminal(client, args.ref)
        return None
    if args.verb == "consoledata":
        sys.stdout.buffer.write(client.console_data(args.ref, args.length))
        sys.stdout.flush()
        return None
    if args.verb == "consoledelete":
        client.clear_console(args.ref)
        return None
    if args.verb == "screenshot":
        blob = client.screenshot(args.ref)
        download_file(client, blob, args.file)
        return {"blob_uuid": blob, "file": str(args.file)}
    helper = client.vdi_console_helper(args.ref)
    if args.file is None:
        print(helper["vv"], end="")
        return None
    args.file.write_text(helper["vv"])
    return {"file": str(args.file), **{k: v for k, v in helper.items() if k != "vv"}}


def run_blob(args: argparse.Namespace, client: Client) -> Any:
    """Blob commands."""
    if args.verb == "upload":
        return upload_file(client, args.path)
    if args.verb == "download":
        download_file(client, args.uuid, args.path)
        return client.blob(args.uuid)
    if args.verb == "list":
        return client.list_blobs()
    if args.verb == "events":
        return client.blob_events(args.ref, args.type, args.limit)
    return client.blob(args.uuid)


def run_artifact(args: argparse.Namespace, client: Client) -> Any:
    """Artifact commands."""
    verb = args.verb
    if verb == "upload":
        progress = Progress(f"upload {args.path.name}", args.path.stat().st_size)
        art = client.upload_artifact(args.name, file_chunks(args.path), progress)
        progress.finish()
        return art
    if verb == "cache":
        return cache_url(args, client)
    if verb == "label":
        return client.label_blob(args.name, args.blob_uuid)
    if verb == "show":
        return client.artifact(args.ref)
    if verb == "delete":
        return client.delete_artifact(args.ref)
    if verb == "delete-all":
        if not args.confirm:
            raise SystemExit("error: delete-all deletes every artifact: add --confirm")
        return client.delete_all_artifacts()
    if verb == "versions":
        return client.artifact_versions(args.ref)
    if verb == "delete-version":
        return client.delete_artifact_version(args.ref, args.index)
    if verb == "max-versions":
        return client.set_max_versions(args.ref, args.max_versions)
    if verb == "events":
        return client.artifact_events(args.ref, args.type, args.limit)
    if verb in ("share", "unshare"):
        return client.share_artifact(args.ref, verb == "share")
    return client.list_artifacts()


def cache_url(args: argparse.Namespace, client: Client) -> JsonDict:
    """Start caching a URL; unless --no-wait, show a progress bar until the fetch ends."""
    art = client.cache_url(args.url, args.name, args.shared)
    if args.no_wait:
        return art
    bar: Progress | None = None

    def show(current: JsonDict) -> None:
        nonlocal bar
        fetch = current.get("fetch", {})
        size, done = int(fetch.get("size", 0)), int(fetch.get("fetched", 0))
        if bar is None:
            bar = Progress(f"fetch {current['name']}", size, sys.stderr)
        bar.total = size or max(done, 1)
        bar(done - bar.done)

    art = client.wait_fetch(art["uuid"], show)
    if bar is not None:
        if art["state"] == "created":
            size = int(art.get("fetch", {}).get("size", 0))
            bar.total = size or bar.total
            bar(size - bar.done)
        bar.finish()
    if art["state"] == "error":
        print(f"error: the fetch failed: {art.get('error', '')}", file=sys.stderr)
        args.exit_code = 1
    return art


def render_artifact(args: argparse.Namespace, result: Any) -> bool:
    """Print artifact and blob lists as columns; False when the result is shown as JSON."""
    verb = args.verb
    if args.noun == "artifact" and verb in ("list", "delete-all"):
        rows = [
            [
                a["uuid"],
                f"{a['type']}:{a['name']}",
                a["state"],
                f"{len(a['versions'])} of {a['max_versions']}",
                "shared" if a["shared"] else "",
                a["blob_uuid"],
            ]
            for a in result
        ]
        headers = ["uuid", "artifact", "state", "versions", "shared", "newest blob"]
        print(table.render(headers, rows))
    elif verb == "versions":
        rows = [
            [v["index"], v["blob_uuid"], v["size"], _stamp(float(v["created_at"]))] for v in result
        ]
        print(table.render(["index", "blob", "size", "created"], rows))
    elif args.noun == "blob" and verb == "list":
        rows = [
            [b["uuid"], b["size"], b["reference_count"], b["instances"], b["sha512"][:16]]
            for b in result
        ]
        print(table.render(["uuid", "size", "references", "instances", "sha512"], rows))
    elif verb == "events":
        show_events(result)
    else:
        return False
    return True


def _stamp(when: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(when))


def _consistency(snap: JsonDict) -> str:
    """How consistent a snapshot is, with why when it was not frozen."""
    note = snap.get("note", "")
    return f"{snap['consistency']} ({note})" if note else str(snap["consistency"])


def show_events(events: list[JsonDict]) -> None:
    """Events, one a line: time, type, where, message."""
    for event in events:
        stamp = _stamp(event["timestamp"])
        print(f"{stamp}  {event['type']:<7} {event['fqdn']:<12} {event['message']}")


def user_data(args: argparse.Namespace) -> str:
    """The create request's user data: the text or file given, base64-encoded."""
    raw = args.user_data_file.read_bytes() if args.user_data_file else args.user_data.encode()
    return base64.b64encode(raw).decode() if raw else ""


def run(args: argparse.Namespace, client: Client) -> Any:
    """Perform one command; returns what --json prints."""
    if args.verb.endswith("-metadata"):
        return run_metadata(args, client)
    if args.noun in ("network", "interface") or args.verb in ("add-interface", "interfaces"):
        return run_network(args, client)
    if args.noun == "namespace":
        return run_namespace(args, client)
    if args.noun == "node":
        return run_node(args, client)
    if args.noun == "blob":
        return run_blob(args, client)
    if args.noun == "artifact":
        return run_artifact(args, client)
    verb = args.verb
    if verb in ("execute", "copy-to", "copy-from", "agentops"):
        return run_agent(args, client)
    if verb in ("console", "consoledata", "consoledelete", "screenshot", "vdiconsolefile"):
        return run_console(args, client)
    if verb == "create":
        spec = {
            "name": args.name,
            "cpus": args.cpus,
            "memory": args.memory,
            "disks": args.disk or [{"size_gb": 2, "base": "debian:11"}],
            "networks": args.network,
            "side_channels": args.side_channel,
            "video": video_spec(args.video),
            "ssh_key": args.ssh_key,
            "user_data": user_data(args),
            "configdrive": args.configdrive,
            "uefi": args.uefi,
            "secure_boot": args.secure_boot,
            "nvram_template": args.nvram_template,
            "metadata": dict(args.metadata),
        }
        inst = client.create(spec, args.node)
        if args.wait:
            inst = client.wait(inst["uuid"], lambda i: i["state"] in ("created", "error"))
        return inst
    if verb == "list":
        return client.list_instances(include_deleted=args.all)
    if verb == "show":
        return client.get(args.ref)
    if verb == "delete":
        return client.delete(args.ref)
    if verb == "delete-all":
        if not args.confirm:
            raise SystemExit("error: delete-all deletes every instance: add --confirm")
        return [client.delete(inst["uuid"]) for inst in client.list_instances()]
    if verb in POWER_COMMANDS:
        return client.power(args.ref, POWER_COMMANDS[verb])
    if verb == "move":
        return client.move(args.ref, args.node)
    if verb == "snapshot":
        return client.snapshot(args.ref, args.device, args.thin, args.label)
    if verb == "snapshots":
        return client.snapshots(args.ref)
    if verb == "reboot":
        return client.power(args.ref, "hard-reboot" if args.hard else "soft-reboot")
    if verb == "events":
        return client.events(args.ref, args.type, args.limit)
    if verb == "watch":
        for update in client.watch(args.ref):
            print(json.dumps(update), flush=True)
        return None
    raise SystemExit(f"unknown command {verb}")


def render(args: argparse.Namespace, result: Any) -> None:
    """Print a result for people (or as JSON)."""
    if result is None:
        return
    if not args.json and (
        args.noun in ("network", "interface") or args.verb in ("add-interface", "interfaces")
    ):
        render_network(args, result)
        return
    if not args.json and args.noun == "namespace" and not args.verb.endswith("-metadata"):
        render_namespace(args, result)
        return
    if not args.json and args.noun == "node" and not args.verb.endswith("-metadata"):
        render_node(args, result)
        return
    if not args.json and args.noun in ("blob", "artifact") and render_artifact(args, result):
        return
    if (
        args.json
        or args.noun in ("blob", "artifact")
        or args.verb in ("copy-to", "copy-from", "agentops", "screenshot", "vdiconsolefile")
        or args.verb.endswith("-metadata")
    ):
        print(json.dumps(result, indent=2, sort_keys=True))
    elif args.verb == "delete-all":
        print(f"deleted {len(result)} instances")
    elif args.verb == "list":
        rows = [
            [i["uuid"], i["spec"]["name"], i["state"], i.get("power_state", ""), i.get("node", "")]
            for i in result
        ]
        print(table.render(["uuid", "name", "state", "power", "node"], rows))
    elif args.verb == "snapshot":
        rows = [
            [s["device"], s["source_url"], s["artifact_index"], s["blob_uuid"], _consistency(s)]
            for s in result
        ]
        print(table.render(["device", "artifact", "version", "blob", "consistency"], rows))
    elif args.verb == "snapshots":
        rows = [
            [s["device"], s["index"], s["blob_uuid"], s["size"], _stamp(s["created"]), s["state"]]
            for s in result
        ]
        print(table.render(["device", "version", "blob", "size", "created", "state"], rows))
    elif args.verb == "events":
        show_events(result)
    else:
        show_instance(result)


def main(argv: list[str] | None = None) -> int:
    """Console script: minicloud."""
    args = build_parser().parse_args(argv)
    args.exit_code = 0
    try:
        client = Client(
            args.api,
            args.namespace,
            args.auth_key,
            ca_file=args.ca_file,
            plaintext=args.plaintext,
        )
    except OSError as exc:
        print(f"error: cannot read the CA certificate: {exc}", file=sys.stderr)
        return 1
    try:
        render(args, run(args, client))
    except grpc.RpcError as exc:
        print(f"error: {exc.code().name}: {exc.details()}", file=sys.stderr)
        return 1
    except (TimeoutError, KeyboardInterrupt) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:
        # The reader went away (`minicloud ... | grep -q`): no traceback, and nothing more
        # written to the closed pipe when Python flushes stdout at exit.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    finally:
        client.close()
    return int(args.exit_code)


if __name__ == "__main__":
    sys.exit(main())
