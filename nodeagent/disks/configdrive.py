"""The content of an OpenStack-format config drive: a pure function from spec to files.

cloud-init's ConfigDrive data source finds a filesystem labelled
``config-2`` and reads ``openstack/<version>/meta_data.json``,
``user_data``, ``network_data.json`` and ``vendor_data.json`` from it (the
newest dated version it knows, else ``latest``). The drive holds the same
files under ``latest`` and ``2017-02-22``. ``meta_data.json`` carries the
instance's UUID, hostname (its name), namespace (as ``project_id``), the ssh
key as ``public_keys.mykey`` (as Shaken Fist names it), the availability
zone, a fresh ``random_seed`` per build, and the user metadata as ``meta``
(string values; others JSON-encoded). ``user_data`` is the API's base64
decoded. ``network_data.json`` lists one link and one network per interface
(static IPv4 when the address is known, DHCP otherwise); an interface on a
network with DNS also names the network's DNS server (``dns_nameservers``,
and once in ``services`` as ``{"type": "dns"}``) and domain
(``dns_search``). An instance without interfaces gets empty lists, which
cloud-init accepts.

Building the ISO image from these files is ``nodeagent.disks.iso``'s job.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
from typing import Any

from common.nodewire.domain import DomainRequest, NetworkRequest
from nodeagent.disks.protocol import DiskError

LABEL = "config-2"
VERSIONS = ("latest", "2017-02-22")
SSH_KEY_NAME = "mykey"
RANDOM_SEED_BYTES = 512


def decode_user_data(user_data: str) -> bytes:
    """The user data bytes from the API's base64 text; DiskError when it is not base64."""
    try:
        return base64.b64decode("".join(user_data.split()), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DiskError(f"user data is not valid base64: {exc}") from exc


def meta_data(spec: DomainRequest, *, random_seed: bytes, availability_zone: str) -> dict[str, Any]:
    """The ``meta_data.json`` document for an instance."""
    document: dict[str, Any] = {
        "uuid": spec.uuid,
        "name": spec.name,
        "hostname": spec.name,
        "project_id": spec.namespace,
        "availability_zone": availability_zone,
        "launch_index": 0,
        "devices": [],
        "random_seed": base64.b64encode(random_seed).decode(),
    }
    if spec.ssh_key:
        document["public_keys"] = {SSH_KEY_NAME: spec.ssh_key}
        document["keys"] = [{"name": SSH_KEY_NAME, "type": "ssh", "data": spec.ssh_key}]
    if spec.metadata:
        document["meta"] = {
            key: value if isinstance(value, str) else json.dumps(value, sort_keys=True)
            for key, value in spec.metadata.items()
        }
    return document


def _network(index: int, interface: NetworkRequest) -> dict[str, Any]:
    network: dict[str, Any] = {
        "id": f"network{index}",
        "link": f"eth{index}",
        "network_id": interface.network_uuid,
        "routes": [],
    }
    if interface.dns_servers:
        network["dns_nameservers"] = list(interface.dns_servers)
    if interface.dns_domain:
        network["dns_search"] = [interface.dns_domain]
    if not interface.address:
        network["type"] = "ipv4_dhcp"
        return network
    try:
        address = ipaddress.ip_interface(interface.address)
    except ValueError as exc:
        raise DiskError(f"interface {index}: {interface.address!r} is not an address") from exc
    network["type"] = "ipv6" if address.version == 6 else "ipv4"
    network["ip_address"] = str(address.ip)
    if "/" in interface.address:
        network["netmask"] = str(address.network.netmask)
    return network


def network_data(spec: DomainRequest) -> dict[str, Any]:
    """The ``network_data.json`` document: links, networks and services."""
    links = []
    for index, interface in enumerate(spec.networks):
        link: dict[str, Any] = {"id": f"eth{index}", "type": "vif", "mtu": 1500}
        if interface.mac:
            link["ethernet_mac_address"] = interface.mac
        if interface.network_uuid:
            link["vif_id"] = interface.network_uuid
        links.append(link)
    networks = [_network(i, n) for i, n in enumerate(spec.networks)]
    servers = dict.fromkeys(s for n in spec.networks for s in n.dns_servers)
    services = [{"type": "dns", "address": server} for server in servers]
    return {"links": links, "networks": networks, "services": services}


def drive_files(
    spec: DomainRequest, *, random_seed: bytes, availability_zone: str = "minicloud"
) -> dict[str, bytes]:
    """Every file of the config drive, by path relative to the drive's root."""

    def encode(document: dict[str, Any]) -> bytes:
        return json.dumps(document, indent=2, sort_keys=True).encode()

    documents = {
        "meta_data.json": encode(
            meta_data(spec, random_seed=random_seed, availability_zone=availability_zone)
        ),
        "network_data.json": encode(network_data(spec)),
        "vendor_data.json": encode({}),
        "vendor_data2.json": encode({}),
    }
    if spec.user_data:
        documents["user_data"] = decode_user_data(spec.user_data)
    return {
        f"openstack/{version}/{name}": content
        for version in VERSIONS
        for name, content in documents.items()
    }
