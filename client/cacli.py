"""`minicloud-ca`: the cluster's certificate authority, kept in a folder.

    minicloud-ca init                                  # the CA and the cluster's id
    minicloud-ca issue-server controlplane --san 127.0.0.1 --san cp.example.org
    minicloud-ca issue-node node1 [--days 365]         # a node agent's client certificate
    minicloud-ca renew node1 ; minicloud-ca revoke node1
    minicloud-ca list

The folder is MINICLOUD_CA_DIR (default ./ca), or --dir. Keys are written
0600. A node certificate names its node: the node agent holding it may speak
only as that node.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

from client import table
from client.cadir import CaDir, CaError
from common import pki


def build_parser() -> argparse.ArgumentParser:
    """The argument parser."""
    parser = argparse.ArgumentParser(
        prog="minicloud-ca",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dir", type=Path, default=Path(os.environ.get("MINICLOUD_CA_DIR", "ca")), help="CA folder"
    )
    verbs = parser.add_subparsers(dest="verb", required=True)
    init = verbs.add_parser("init", help="create the CA")
    init.add_argument("--cluster-id", default="", help="default: a new UUID")
    server = verbs.add_parser("issue-server", help="a server certificate")
    server.add_argument("name")
    server.add_argument("--san", action="append", default=[], help="DNS name or IP (repeatable)")
    server.add_argument("--days", type=int, default=pki.DEFAULT_DAYS)
    node = verbs.add_parser("issue-node", help="a node agent's certificate")
    node.add_argument("name", help="the node's name")
    node.add_argument("--days", type=int, default=pki.DEFAULT_DAYS)
    renew = verbs.add_parser("renew", help="a new key and certificate for an issued name")
    renew.add_argument("name")
    renew.add_argument("--days", type=int, default=pki.DEFAULT_DAYS)
    verbs.add_parser("revoke", help="revoke an issued name's certificate").add_argument("name")
    verbs.add_parser("list", help="issued certificates")
    return parser


def run(args: argparse.Namespace, now: datetime.datetime) -> str:
    """Perform one command; returns what to print."""
    ca = CaDir(args.dir)
    if args.verb == "init":
        cluster_id = ca.init(now, args.cluster_id)
        return f"CA for cluster {cluster_id} in {args.dir}"
    if args.verb == "issue-server":
        path = ca.issue("server", args.name, now, sans=tuple(args.san), days=args.days)
        return f"issued {path} (key {path.with_suffix('.key')})"
    if args.verb == "issue-node":
        path = ca.issue("node", args.name, now, days=args.days)
        return f"issued {path} (key {path.with_suffix('.key')})"
    if args.verb == "renew":
        path = ca.renew(args.name, now, days=args.days)
        return f"renewed {path}; the old certificate is revoked"
    if args.verb == "revoke":
        return f"revoked {args.name} (serial {ca.revoke(args.name, now):x})"
    rows = [
        [
            item.info.name,
            item.info.kind,
            f"{item.info.serial:x}"[:16],
            item.info.not_after.strftime("%Y-%m-%d"),
            "revoked" if item.revoked else ("expired" if item.info.not_after < now else "valid"),
            list(item.info.sans),
        ]
        for item in ca.listing()
    ]
    return table.render(["name", "kind", "serial", "expires", "status", "names"], rows)


def main(argv: list[str] | None = None) -> int:
    """Console script: minicloud-ca."""
    args = build_parser().parse_args(argv)
    try:
        print(run(args, datetime.datetime.now(datetime.UTC)))
    except (CaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
