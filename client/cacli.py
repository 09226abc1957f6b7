"""`minicloud-ca`: the cluster's certificate authority, kept in a folder.

    minicloud-ca init                                  # the CA and the cluster's id
    minicloud-ca issue-server controlplane --san 127.0.0.1 --san cp.example.org
    minicloud-ca issue-node node1 [--days 365]         # a node agent's client certificate
    minicloud-ca issue-gateway rest-gateway            # the REST gateway's client certificate
    minicloud-ca renew node1 ; minicloud-ca revoke node1 --reason "disk stolen"
    minicloud-ca list
    minicloud-ca token-key new-token-signing-key       # an Ed25519 token key pair (rotation)

The folder is MINICLOUD_CA_DIR (default ./ca), or --dir. Keys are written
0600. A node certificate names its node: the node agent holding it may speak
only as that node. A gateway certificate is what lets a REST gateway pass its
callers' addresses on to the control plane (MINICLOUD_GATEWAY_CLIENT_CERT/_KEY).
revoke and renew also tell the control plane at MINICLOUD_API (--api; with
the system key MINICLOUD_KEY), which keeps revocations in its store: every
control plane then refuses the old certificate and closes a stream it holds
open within seconds. --api "" records the revocation in the folder only.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

import grpc

from client import table
from client.api import Client
from client.cadir import CaDir, CaError, new_token_key
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
    gateway = verbs.add_parser(
        "issue-gateway", help="a REST gateway's certificate (vouches for callers' addresses)"
    )
    gateway.add_argument("name", help="the gateway's name")
    gateway.add_argument("--days", type=int, default=pki.DEFAULT_DAYS)
    tell = argparse.ArgumentParser(add_help=False)
    tell.add_argument(
        "--api",
        default=os.environ.get("MINICLOUD_API", ""),
        help="the control plane to tell (default MINICLOUD_API; empty: the folder only)",
    )
    tell.add_argument("--key", default=os.environ.get("MINICLOUD_KEY", ""), help="system key")
    tell.add_argument(
        "--plaintext",
        action="store_true",
        default=os.environ.get("MINICLOUD_PLAINTEXT", "").lower() in ("1", "true", "yes", "on"),
        help="the control plane runs without TLS",
    )
    renew = verbs.add_parser(
        "renew", parents=[tell], help="a new key and certificate for an issued name"
    )
    renew.add_argument("name")
    renew.add_argument("--days", type=int, default=pki.DEFAULT_DAYS)
    revoke = verbs.add_parser("revoke", parents=[tell], help="revoke an issued name's certificate")
    revoke.add_argument("name")
    revoke.add_argument("--reason", default="revoked")
    verbs.add_parser("list", help="issued certificates")
    token_key = verbs.add_parser(
        "token-key", help="a token signing key (Ed25519, 0600) and its public half (PATH.pub)"
    )
    token_key.add_argument("path", type=Path, help="where to write the private key")
    return parser


def run(args: argparse.Namespace, now: datetime.datetime) -> str:
    """Perform one command; returns what to print."""
    if args.verb == "token-key":
        kid = new_token_key(args.path)
        return f"token signing key {args.path} (key id {kid}); public key {args.path}.pub"
    ca = CaDir(args.dir)
    if args.verb == "init":
        cluster_id = ca.init(now, args.cluster_id)
        return f"CA for cluster {cluster_id} in {args.dir}"
    if args.verb == "issue-server":
        path = ca.issue("server", args.name, now, sans=tuple(args.san), days=args.days)
        return f"issued {path} (key {path.with_suffix('.key')})"
    if args.verb in ("issue-node", "issue-gateway"):
        kind: pki.Kind = "node" if args.verb == "issue-node" else "gateway"
        path = ca.issue(kind, args.name, now, days=args.days)
        return f"issued {path} (key {path.with_suffix('.key')})"
    if args.verb == "renew":
        try:
            old = pki.info((ca.issued / f"{args.name}.crt").read_bytes()).serial
        except FileNotFoundError:
            raise CaError(f"{args.name} was never issued") from None
        path = ca.renew(args.name, now, days=args.days)
        told = tell_control_plane(args, ca, old, "renewed")
        return f"renewed {path}; the old certificate is revoked{told}"
    if args.verb == "revoke":
        serial = ca.revoke(args.name, now, args.reason)
        told = tell_control_plane(args, ca, serial, args.reason)
        return f"revoked {args.name} (serial {serial:x}){told}"
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


def tell_control_plane(args: argparse.Namespace, ca: CaDir, serial: int, reason: str) -> str:
    """Record the revocation in the control plane's store (when --api is set); what to add
    to the message."""
    if not args.api:
        return " (in the folder only: no --api)"
    ca_file = "" if args.plaintext else str(ca.path / "ca.crt")
    with Client(args.api, "system", args.key, 30, ca_file=ca_file, plaintext=args.plaintext) as c:
        c.revoke_certificate(serial, args.name, reason)
    return f"; control plane {args.api} told"


def main(argv: list[str] | None = None) -> int:
    """Console script: minicloud-ca."""
    args = build_parser().parse_args(argv)
    try:
        print(run(args, datetime.datetime.now(datetime.UTC)))
    except (CaError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except grpc.RpcError as exc:
        print(
            f"error: recorded in {args.dir}, but the control plane refused it: "
            f"{exc.code().name}: {exc.details()}",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
