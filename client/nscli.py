"""The CLI's namespace verbs.

minicloud namespace list | show NAME | delete NAME
minicloud namespace create NAME [--key-name NAME] [--key-file FILE]
minicloud namespace add-key NAMESPACE KEY_NAME [--key-file FILE]
minicloud namespace delete-key NAMESPACE KEY_NAME
minicloud namespace trust NAMESPACE TRUSTED | untrust NAMESPACE TRUSTED

A new key is read from --key-file ('-' for standard input), never from the
command line (where other users of the machine could see it in the process
list). Without --key-file a random key is made and printed once: keys are
stored hashed and cannot be shown again.
"""

from __future__ import annotations

import argparse
import secrets
import sys
from pathlib import Path
from typing import Any

from client import table
from client.api import Client, JsonDict


def add_namespace_noun(top: Any) -> Any:
    """Add the namespace noun and its verbs; returns the noun's subparsers."""
    ns = top.add_parser("namespace", help="manage namespaces and their keys").add_subparsers(
        dest="verb", required=True
    )
    ns.add_parser("list", help="list namespaces")
    for verb in ("show", "delete"):
        ns.add_parser(verb).add_argument("name")
    create = ns.add_parser("create", help="create a namespace (system only)")
    create.add_argument("name")
    create.add_argument("--key-name", default="", help="give it a first key of this name")
    create.add_argument("--key-file", type=Path, help="the key's text ('-' for stdin)")
    add_key = ns.add_parser("add-key", help="add or replace a key of a namespace")
    add_key.add_argument("name", metavar="namespace")
    add_key.add_argument("key_name")
    add_key.add_argument("--key-file", type=Path, help="the key's text ('-' for stdin)")
    delete_key = ns.add_parser("delete-key", help="remove a key, revoking its tokens")
    delete_key.add_argument("name", metavar="namespace")
    delete_key.add_argument("key_name")
    for verb, what in (("trust", "let"), ("untrust", "stop")):
        trust = ns.add_parser(
            verb, help=f"{what} another namespace see and use this one's artifacts"
        )
        trust.add_argument("name", metavar="namespace")
        trust.add_argument("trusted")
    return ns


def new_key(path: Path | None) -> tuple[str, bool]:
    """The new key's text, and whether it was generated here (and must be shown)."""
    if path is None:
        return secrets.token_urlsafe(24), True
    text = sys.stdin.read() if str(path) == "-" else path.read_text()
    key = text.strip()
    if not key:
        raise SystemExit("error: the key file is empty")
    return key, False


def run_namespace(args: argparse.Namespace, client: Client) -> Any:
    """Perform one namespace command."""
    verb = args.verb
    if verb == "list":
        return client.list_namespaces()
    if verb == "show":
        return client.get_namespace(args.name)
    if verb == "delete":
        return client.delete_namespace(args.name)
    if verb == "delete-key":
        return client.delete_key(args.name, args.key_name)
    if verb in ("trust", "untrust"):
        return client.trust(args.name, args.trusted, verb == "trust")
    if verb == "create" and not args.key_name:
        return client.create_namespace(args.name)
    key, generated = new_key(args.key_file)
    if verb == "create":
        found = client.create_namespace(args.name, args.key_name, key)
    else:
        found = client.add_key(args.name, args.key_name, key)
    if generated:
        found["generated_key"] = key
    return found


def render_namespace(args: argparse.Namespace, result: JsonDict | list[JsonDict]) -> None:
    """Print a namespace result for people."""
    if isinstance(result, list):
        rows = [
            [n["name"], n.get("state", ""), n.get("keys", []), n.get("trusted", [])] for n in result
        ]
        print(table.render(["name", "state", "keys", "trusts"], rows))
        return
    print(
        table.render(
            ["name", "state", "keys", "trusts"],
            [
                [
                    result["name"],
                    result.get("state", ""),
                    result.get("keys", []),
                    result.get("trusted", []),
                ]
            ],
        )
    )
    if "generated_key" in result:
        print(f"new key (shown once, keep it safe): {result['generated_key']}")
