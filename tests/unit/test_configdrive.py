"""The config drive's content: the file tree cloud-init reads, built from an instance spec."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest

from common.nodewire.commands import CreateDomain
from common.nodewire.convert import command_from_pb, command_to_pb
from common.nodewire.domain import DomainRequest, NetworkRequest
from nodeagent.disks.configdrive import drive_files
from nodeagent.disks.protocol import DiskError
from protos import node_pb2

UUID = "6f1c1a52-8e0c-4c35-9d43-2f6d1b7c0a11"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIFakeKeyForTests test@example"
SEED = bytes(range(16))


def spec(**overrides: Any) -> DomainRequest:
    """A small instance spec with any field overridden."""
    fields: dict[str, Any] = {"uuid": UUID, "name": "web-1", "namespace": "team-a"}
    fields.update(overrides)
    return DomainRequest(**fields)


def document(files: dict[str, bytes], name: str, version: str = "latest") -> Any:
    """One JSON file of the drive, parsed."""
    return json.loads(files[f"openstack/{version}/{name}"])


def test_meta_data_names_the_instance() -> None:
    """meta_data.json holds the UUID, the name as hostname, the namespace and the zone."""
    files = drive_files(spec(), random_seed=SEED, availability_zone="zone-b")
    meta = document(files, "meta_data.json")
    assert meta["uuid"] == UUID
    assert meta["hostname"] == "web-1" and meta["name"] == "web-1"
    assert meta["project_id"] == "team-a"
    assert meta["availability_zone"] == "zone-b"
    assert base64.b64decode(meta["random_seed"]) == SEED
    assert "public_keys" not in meta and "meta" not in meta


def test_ssh_key_is_public_key_mykey() -> None:
    """An ssh key appears as public_keys.mykey, as Shaken Fist names it, and in keys."""
    meta = document(drive_files(spec(ssh_key=KEY), random_seed=SEED), "meta_data.json")
    assert meta["public_keys"] == {"mykey": KEY}
    assert meta["keys"] == [{"name": "mykey", "type": "ssh", "data": KEY}]


def test_user_data_is_decoded_from_base64() -> None:
    """The API's base64 user data is written decoded, byte for byte."""
    raw = b"#cloud-config\nruncmd:\n - echo hi\n\xff\x00"
    files = drive_files(spec(user_data=base64.b64encode(raw).decode()), random_seed=SEED)
    assert files["openstack/latest/user_data"] == raw


def test_no_user_data_file_without_user_data() -> None:
    """Without user data the drive has no user_data file."""
    assert not any(path.endswith("user_data") for path in drive_files(spec(), random_seed=SEED))


def test_user_data_that_is_not_base64_raises() -> None:
    """User data that does not decode is a DiskError, not a corrupt drive."""
    with pytest.raises(DiskError, match="base64"):
        drive_files(spec(user_data="not base64!"), random_seed=SEED)


def test_every_file_is_under_latest_and_a_dated_version() -> None:
    """The same files appear under openstack/latest and openstack/2017-02-22."""
    files = drive_files(spec(user_data="aGk="), random_seed=SEED)
    latest = {p.removeprefix("openstack/latest/") for p in files if "/latest/" in p}
    dated = {p.removeprefix("openstack/2017-02-22/") for p in files if "/2017-02-22/" in p}
    assert latest == dated
    assert latest == {
        "meta_data.json",
        "network_data.json",
        "vendor_data.json",
        "vendor_data2.json",
        "user_data",
    }
    assert document(files, "vendor_data.json") == {}


def test_network_data_without_interfaces_is_empty_but_valid() -> None:
    """An instance without interfaces gets empty links, networks and services."""
    files = drive_files(spec(), random_seed=SEED)
    assert document(files, "network_data.json") == {"links": [], "networks": [], "services": []}


def test_network_data_lists_each_interface() -> None:
    """Each interface is a link with its MAC and a network: static with an address, else DHCP."""
    net = "9b7c2d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
    interfaces = (
        NetworkRequest(network_uuid=net, mac="02:00:00:ea:3a:28", address="10.0.0.5/24"),
        NetworkRequest(network_uuid=net, mac="02:00:00:ea:3a:29"),
    )
    data = document(drive_files(spec(networks=interfaces), random_seed=SEED), "network_data.json")
    assert [link["ethernet_mac_address"] for link in data["links"]] == [
        "02:00:00:ea:3a:28",
        "02:00:00:ea:3a:29",
    ]
    static, dhcp = data["networks"]
    assert static["type"] == "ipv4" and static["link"] == "eth0"
    assert (static["ip_address"], static["netmask"]) == ("10.0.0.5", "255.255.255.0")
    assert static["network_id"] == net
    assert dhcp["type"] == "ipv4_dhcp" and dhcp["link"] == "eth1"


def test_network_data_names_the_dns_of_networks_that_provide_it() -> None:
    """An interface on a network with DNS carries its server and domain; services list it once."""
    net = "9b7c2d4e-1a2b-4c3d-8e9f-0a1b2c3d4e5f"
    servers, domain = ("10.0.0.1",), "team-a.minicloud"
    interfaces = (
        NetworkRequest(net, "02:00:00:ea:3a:28", dns_servers=servers, dns_domain=domain),
        NetworkRequest(net, "02:00:00:ea:3a:29", dns_servers=servers, dns_domain=domain),
        NetworkRequest(network_uuid=net, mac="02:00:00:ea:3a:2a"),
    )
    data = document(drive_files(spec(networks=interfaces), random_seed=SEED), "network_data.json")
    first, second, plain = data["networks"]
    assert first["dns_nameservers"] == ["10.0.0.1"] == second["dns_nameservers"]
    assert first["dns_search"] == ["team-a.minicloud"]
    assert "dns_nameservers" not in plain and "dns_search" not in plain
    assert data["services"] == [{"type": "dns", "address": "10.0.0.1"}]


def test_bad_interface_address_raises() -> None:
    """An interface address that is not an IP address is a DiskError."""
    with pytest.raises(DiskError, match="address"):
        drive_files(spec(networks=(NetworkRequest(address="ten"),)), random_seed=SEED)


def test_metadata_becomes_meta_with_string_values() -> None:
    """User metadata appears as meta; values that are not strings are JSON-encoded."""
    metadata = {"role": "web", "tags": ["a", "b"], "weight": 3}
    meta = document(drive_files(spec(metadata=metadata), random_seed=SEED), "meta_data.json")
    assert meta["meta"] == {"role": "web", "tags": '["a", "b"]', "weight": "3"}


def test_a_fresh_seed_gives_fresh_content() -> None:
    """Two builds with different seeds differ only in the seed."""
    first = document(drive_files(spec(), random_seed=b"a" * 8), "meta_data.json")
    second = document(drive_files(spec(), random_seed=b"b" * 8), "meta_data.json")
    assert first != second
    first.pop("random_seed"), second.pop("random_seed")
    assert first == second


def test_numeric_metadata_reaches_the_drive_as_sent() -> None:
    """A whole-number metadata value sent over the node stream is "3" on the drive, not "3.0"."""
    sent = CreateDomain("c", UUID, spec(metadata={"count": 3, "ratio": 0.5}))
    received = command_from_pb(node_pb2.Command.FromString(command_to_pb(sent).SerializeToString()))
    assert isinstance(received, CreateDomain)
    meta = document(drive_files(received.domain, random_seed=SEED), "meta_data.json")
    assert meta["meta"] == {"count": "3", "ratio": "0.5"}
