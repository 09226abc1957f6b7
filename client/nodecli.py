"""The CLI's node verbs (administrators only): ``minicloud node ...``.

minicloud node list
minicloud node show NAME
minicloud node disable NAME | enable NAME | drain NAME | delete NAME
minicloud node events NAME [--type TYPE] [--limit N]
minicloud node set-metadata NAME KEY VALUE | get-metadata NAME | delete-metadata NAME KEY
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from typing import Any

from client.api import Client, JsonDict
from client.table import render

NODE_VERBS = ("show", "disable", "enable", "drain", "delete")


def add_node_noun(top: Any) -> Any:
    """Add the node noun and its verbs; returns the noun's subparsers."""
    node = top.add_parser("node", help="see and steer nodes (system only)").add_subparsers(
        dest="verb", required=True
    )
    node.add_parser("list", help="list nodes")
    for verb in NODE_VERBS:
        node.add_parser(verb).add_argument("ref", help="node name")
    events = node.add_parser("events")
    events.add_argument("ref")
    events.add_argument("--type", default="")
    events.add_argument("--limit", type=int, default=100)
    return node


def run_node(args: argparse.Namespace, client: Client) -> Any:
    """Perform a node verb."""
    if args.verb == "list":
        return client.list_nodes()
    if args.verb == "show":
        return client.get_node(args.ref)
    if args.verb == "drain":
        return client.drain_node(args.ref)
    if args.verb == "events":
        return client.node_events(args.ref, args.type, args.limit)
    return client.node_action(args.verb, args.ref)


def ago(stamp: float) -> str:
    """A timestamp as seconds ago ("never" for 0)."""
    return f"{max(0, int(time.time() - stamp))}s ago" if stamp else "never"


def show_node(node: JsonDict) -> None:
    """Print one node as aligned key/value lines, then its instances."""
    rows = [
        ("name", node["name"]),
        ("address", node["address"]),
        ("state", node["state"]),
        ("connected", "yes" if node["connected"] else "no"),
        ("last seen", ago(node["last_seen"])),
        ("first seen", time.ctime(node["first_seen"]) if node["first_seen"] else "never"),
        ("hypervisor", node["hypervisor"]),
        ("versions", versions(node)),
        ("cpus", f"{node['committed_cpus']} committed of {node['cpus']}"),
        ("memory", f"{node['committed_memory_mb']} MiB committed of {node['memory_mb']} MiB"),
        ("disk", f"{node['committed_disk_gb']} GB committed of {node['disk_gb']} GB"),
        ("metadata", json.dumps(node.get("metadata", {}), sort_keys=True)),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    instances = node.get("instances", [])
    if instances:
        print()
        print(instance_table(instances))


def versions(node: JsonDict) -> str:
    """The node agent, QEMU and libvirt versions it reported."""
    parts = [
        f"{label} {node[key]}"
        for label, key in (
            ("agent", "agent_version"),
            ("qemu", "qemu_version"),
            ("libvirt", "libvirt_version"),
        )
        if node.get(key)
    ]
    return ", ".join(parts) or "unknown"


def instance_table(instances: Sequence[JsonDict]) -> str:
    """A node's instances as columns."""
    return render(
        ("uuid", "name", "namespace", "state", "power"),
        [(i["uuid"], i["name"], i["namespace"], i["state"], i["power_state"]) for i in instances],
    )


def render_node(args: argparse.Namespace, result: Any) -> None:
    """Print a node verb's result for people."""
    if args.verb == "list":
        print(
            render(
                ("name", "address", "state", "connected", "last seen", "instances", "version"),
                [
                    (
                        n["name"],
                        n["address"],
                        n["state"],
                        "yes" if n["connected"] else "no",
                        ago(n["last_seen"]),
                        n["instance_count"],
                        n["agent_version"],
                    )
                    for n in result
                ],
            )
        )
    elif args.verb == "events":
        rows = [
            (
                time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(e["timestamp"])),
                e["type"],
                e["message"],
            )
            for e in result
        ]
        print(render(("timestamp", "type", "message"), rows))
    elif args.verb == "drain":
        show_node(result["node"])
        for label, key in (("blocking (running)", "blocking"), ("to move (stopped)", "to_move")):
            print()
            print(f"{label}: {len(result.get(key, []))}")
            if result.get(key):
                print(instance_table(result[key]))
    else:
        show_node(result)
