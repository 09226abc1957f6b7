"""The CLI's network verbs: ``network ...``, ``interface ...`` and the instance's NIC verbs.

minicloud network create NAME NETBLOCK [--no-dhcp] [--no-nat] [--dns]
minicloud network list [--all] | show REF | delete REF [--clean]
minicloud network addresses REF | interfaces REF | events REF
minicloud instance create NAME --network NET[@IP] ...
minicloud instance add-interface REF NET[@IP] [--model M] [--mac MAC] [--float]
minicloud instance interfaces REF
minicloud interface show UUID | float UUID | defloat UUID
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from client.api import Client, JsonDict


def parse_network(text: str) -> JsonDict:
    """A network request: NET[@IP] (Shaken Fist's -n), or network_uuid=U,address=A,... ."""
    if "=" not in text:
        name, _, address = text.partition("@")
        found: JsonDict = {"network_uuid": name}
        if address:
            found["address"] = address
        return found
    net: JsonDict = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        key = {"network": "network_uuid", "mac": "macaddress"}.get(key, key)
        if key not in ("network_uuid", "address", "macaddress", "model", "float"):
            raise argparse.ArgumentTypeError(f"unknown network field {key!r}")
        net[key] = value.lower() in ("1", "true", "yes") if key == "float" else value
    return net


def add_network_nouns(top: Any, instance: Any) -> list[Any]:
    """Add the network and interface nouns, and the instance's NIC verbs; returns the nouns."""
    net = top.add_parser("network", help="manage networks").add_subparsers(
        dest="verb", required=True
    )
    create = net.add_parser("create", help="create a network")
    create.add_argument("name")
    create.add_argument("netblock", help="IPv4 CIDR, at least /29, e.g. 10.0.0.0/24")
    create.add_argument("--no-dhcp", action="store_true")
    create.add_argument("--no-nat", action="store_true")
    create.add_argument(
        "--dns", action="store_true", help="answer NAME.NAMESPACE.ZONE for its instances"
    )
    net.add_parser("list").add_argument("--all", action="store_true", help="include deleted")
    for verb in ("show", "addresses", "interfaces"):
        net.add_parser(verb).add_argument("ref", help="UUID or name")
    delete = net.add_parser("delete")
    delete.add_argument("ref")
    delete.add_argument(
        "--clean", action="store_true", help="release interfaces of instances being deleted"
    )
    events = net.add_parser("events")
    events.add_argument("ref")
    events.add_argument("--type", default="")
    events.add_argument("--limit", type=int, default=100)
    iface = top.add_parser("interface", help="manage interfaces").add_subparsers(
        dest="verb", required=True
    )
    for verb in ("show", "float", "defloat"):
        iface.add_parser(verb).add_argument("ref", help="interface UUID")
    add = instance.add_parser("add-interface", help="hot plug an interface")
    add.add_argument("ref")
    add.add_argument("network", type=parse_network, help="NET[@IP] or network_uuid=...,...")
    add.add_argument("--model", default="")
    add.add_argument("--mac", default="")
    add.add_argument("--float", action="store_true")
    instance.add_parser("interfaces", help="list an instance's interfaces").add_argument("ref")
    return [net, iface]


def run_network(args: argparse.Namespace, client: Client) -> Any:
    """Perform a network, interface or instance NIC verb."""
    verb = args.verb
    if args.noun == "network":
        if verb == "create":
            return client.create_network(
                args.name, args.netblock, not args.no_dhcp, not args.no_nat, args.dns
            )
        if verb == "list":
            return client.list_networks(args.all)
        if verb == "show":
            return client.get_network(args.ref)
        if verb == "delete":
            return client.delete_network(args.ref, args.clean)
        if verb == "addresses":
            return client.network_addresses(args.ref)
        if verb == "interfaces":
            return client.network_interfaces(args.ref)
        return client.network_events(args.ref, args.type, args.limit)
    if args.noun == "interface":
        if verb == "float":
            return client.float_interface(args.ref)
        if verb == "defloat":
            return client.defloat_interface(args.ref)
        return client.get_interface(args.ref)
    if verb == "interfaces":
        return client.interfaces(args.ref)
    spec = dict(args.network)
    if args.model:
        spec["model"] = args.model
    if args.mac:
        spec["macaddress"] = args.mac
    if args.float:
        spec["float"] = True
    return client.attach_interface(args.ref, spec)


def render_network(args: argparse.Namespace, result: Any) -> None:
    """Print a network verb's result for people."""
    if args.noun == "network" and args.verb == "list":
        print(f"{'uuid':<36}  {'name':<16} {'netblock':<18} {'state':<8} vxlan")
        for net in result:
            print(
                f"{net['uuid']:<36}  {net['name']:<16} {net['netblock']:<18} "
                f"{net['state']:<8} {net['vxlan_id']}"
            )
    elif args.verb == "addresses":
        for a in result:
            user = f"{a['user_type']} {a['user_uuid']}" if a["user_type"] else ""
            print(f"{a['address']:<16} {a['type']:<10} {user}")
    elif isinstance(result, list):
        print(f"{'uuid':<36}  {'order':<5} {'ipv4':<15} {'macaddr':<17} {'floating':<15} state")
        for i in result:
            print(
                f"{i['uuid']:<36}  {i['order']:<5} {i['ipv4']:<15} {i['macaddr']:<17} "
                f"{i['floating']:<15} {i['state']}"
            )
    else:
        print(json.dumps(result, indent=2, sort_keys=True))
