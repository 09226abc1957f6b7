"""The REST gateway's networks and interfaces against a real control plane (fake nodes)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from controlplane.app import ControlPlane, start
from tests.component.conftest import FakeNode, plane_settings, start_fake_node
from tests.component.test_gateway import Rest, create_body, created, start_gateway, token_keys
from tests.component.test_gateway_nodes import sf

JsonDict = dict[str, Any]
INTERFACE_KEYS = {
    "uuid",
    "network_uuid",
    "instance_uuid",
    "macaddr",
    "ipv4",
    "order",
    "model",
    "floating",
    "state",
    "metadata",
    "version",
}
NETWORK_KEYS = {
    "uuid",
    "name",
    "namespace",
    "netblock",
    "provide_dhcp",
    "provide_nat",
    "provide_dns",
    "floating_gateway",
    "vxid",
    "vxlan_id",
    "state",
    "metadata",
    "version",
}
UNKNOWN = f"{'5' * 8}-5555-5555-5555-{'5' * 12}"


@pytest.fixture
async def small_pool_plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A plane whose floating pool is a /29 (five usable addresses)."""
    settings = replace(plane_settings(tmp_path / "cp"), floating_netblock="192.168.250.0/29")
    plane = await start(settings)
    yield plane
    await plane.stop(0)


@pytest.fixture
async def fake_node(small_pool_plane: ControlPlane) -> AsyncIterator[FakeNode]:
    """One fake node (with the fake network driver)."""
    fake = await start_fake_node(f"127.0.0.1:{small_pool_plane.port}", memory_mb=16384)
    yield fake
    await fake.stop()


@pytest.fixture
async def rest(small_pool_plane: ControlPlane, fake_node: FakeNode) -> AsyncIterator[Rest]:
    """A gateway in front of the plane, and a system client of it."""
    runner, url = await start_gateway(
        f"127.0.0.1:{small_pool_plane.port}", token_keys(small_pool_plane)
    )
    async with aiohttp.ClientSession() as session:
        client = Rest(session, url)
        await client.login()
        yield client
    await runner.cleanup()


async def make_network(rest: Rest, name: str = "net1", **overrides: Any) -> JsonDict:
    """What shakenfist-client's allocate_network sends; the network must be made."""
    body = {
        "netblock": "10.0.0.0/24",
        "provide_dhcp": True,
        "provide_nat": True,
        "name": name,
        "namespace": None,
    }
    body.update(overrides)
    status, net = await rest.call("POST", "/networks", body)
    assert status == 200, net
    return net  # type: ignore[no-any-return]


def netdesc(network: str, **overrides: Any) -> JsonDict:
    """What sf-client's -n NET[@IP] sends."""
    desc: JsonDict = {"network_uuid": network, "macaddress": None, "model": "virtio"}
    desc.update(overrides)
    return desc


async def test_network_create_get_list_and_delete_in_shaken_fist_shapes(rest: Rest) -> None:
    """A network has §5.7's fields, false booleans stay false, and delete returns it deleted."""
    net = await make_network(rest, provide_dhcp=False)
    assert set(net) == NETWORK_KEYS
    assert net["state"] == "created" and net["version"] == 4 and net["provide_dns"] is False
    assert net["provide_dhcp"] is False and net["provide_nat"] is True
    assert net["floating_gateway"].startswith("192.168.250.")
    assert net["vxid"] == net["vxlan_id"] and net["netblock"] == "10.0.0.0/24"
    for ref in (net["uuid"], "net1"):
        assert await rest.call("GET", f"/networks/{ref}") == (200, net)
    assert await rest.call("GET", "/networks/net1", {"namespace": "system"}) == (200, net)
    status, listed = await rest.call("GET", "/networks", {"all": False})
    assert status == 200 and [n["uuid"] for n in listed] == [net["uuid"]]
    no_nat = await make_network(rest, "net2", netblock="10.1.0.0/29", provide_nat=False)
    assert no_nat["floating_gateway"] is None and no_nat["provide_dhcp"] is True

    status, addresses = await rest.call("GET", "/networks/net1/addresses")
    assert status == 200
    by_address = {a["address"]: a for a in addresses}
    assert {by_address[a]["type"] for a in ("10.0.0.0", "10.0.0.1", "10.0.0.255")} == {
        "network",
        "gateway",
        "broadcast",
    }
    assert set(addresses[0]) == {"address", "user", "when", "type", "comment"}
    assert by_address["10.0.0.1"]["user"] is None

    status, events = await rest.call("GET", "/networks/net1/events", {"limit": "5"})
    assert status == 200 and events and "create requested" in [e["message"] for e in events]
    assert await rest.call("PUT", "/networks/net1/metadata/colour", {"value": "red"}) == (
        200,
        None,
    )
    assert await rest.call("GET", f"/networks/{net['uuid']}/metadata") == (200, {"colour": "red"})
    assert (await rest.call("GET", "/networks/net1"))[1]["metadata"] == {"colour": "red"}

    status, gone = await rest.call("DELETE", "/networks/net1")
    assert status == 200 and gone["uuid"] == net["uuid"] and gone["state"] == "deleted"
    status, again = await rest.call("DELETE", f"/networks/{net['uuid']}")
    assert status == 404 and "deleted" in again["error"]
    assert (await rest.call("GET", f"/networks/{net['uuid']}"))[1]["state"] == "deleted"
    status, every = await rest.call("GET", "/networks", {"all": True})
    assert {n["name"]: n["state"] for n in every} == {"net1": "deleted", "net2": "created"}
    status, body = await rest.call("DELETE", "/networks/floating")
    assert (status, body["error"]) == (403, "you cannot delete the floating network")


async def test_instances_embed_their_interfaces_and_hot_plug_adds_one(rest: Rest) -> None:
    """Create with netdescs, interfaces in order, hot plug, float and defloat, delete refusals."""
    net = await make_network(rest)
    status, inst = await rest.call(
        "POST",
        "/instances",
        create_body(
            "netvm",
            network=[
                netdesc("net1", address="10.0.0.10"),
                netdesc(net["uuid"], float=True, model="e1000", macaddress="02:00:00:aa:bb:cc"),
            ],
        ),
    )
    assert status == 200, inst
    inst = await created(rest, inst["uuid"])
    ifaces = inst["interfaces"]
    assert [set(i) for i in ifaces] == [INTERFACE_KEYS, INTERFACE_KEYS]
    assert [i["order"] for i in ifaces] == [0, 1]
    assert ifaces[0]["ipv4"] == "10.0.0.10" and ifaces[0]["floating"] is None
    assert ifaces[0]["network_uuid"] == net["uuid"] and ifaces[0]["instance_uuid"] == inst["uuid"]
    assert ifaces[1]["model"] == "e1000" and ifaces[1]["macaddr"] == "02:00:00:aa:bb:cc"
    assert ifaces[1]["floating"].startswith("192.168.250.") and ifaces[1]["version"] == 3
    assert all(i["state"] == "created" for i in ifaces)
    assert await rest.call("GET", "/instances/netvm/interfaces") == (200, ifaces)
    status, listed = await rest.call("GET", "/instances", {"all": False})
    assert listed[0]["interfaces"] == ifaces
    assert await rest.call("GET", f"/interfaces/{ifaces[0]['uuid']}") == (200, ifaces[0])
    status, on_net = await rest.call("GET", "/networks/net1/interfaces")
    assert sorted(i["uuid"] for i in on_net) == sorted(i["uuid"] for i in ifaces)
    status, addresses = await rest.call("GET", "/networks/net1/addresses")
    held = next(a for a in addresses if a["address"] == "10.0.0.10")
    assert held["type"] == "instance" and held["user"] == ["interface", ifaces[0]["uuid"]]

    base = f"/interfaces/{ifaces[0]['uuid']}/metadata"
    assert await rest.call("PUT", f"{base}/role", {"value": "front"}) == (200, None)
    assert await rest.call("GET", base) == (200, {"role": "front"})
    assert await rest.call("DELETE", f"{base}/role") == (200, None)

    assert await rest.call("POST", f"/interfaces/{ifaces[0]['uuid']}/float") == (200, None)
    floated = (await rest.call("GET", f"/interfaces/{ifaces[0]['uuid']}"))[1]
    assert floated["floating"].startswith("192.168.250.")
    assert await rest.call("POST", f"/interfaces/{ifaces[0]['uuid']}/defloat") == (200, None)
    assert (await rest.call("GET", f"/interfaces/{ifaces[0]['uuid']}"))[1]["floating"] is None

    status, plugged = await rest.call(
        "POST",
        "/instances/netvm/interfaces",
        {"network": {"network_uuid": "net1", "address": "10.0.0.5", "macaddress": None}},
    )
    assert status == 200, plugged
    assert set(plugged) == INTERFACE_KEYS
    assert (plugged["order"], plugged["ipv4"], plugged["state"]) == (2, "10.0.0.5", "created")
    status, now = await rest.call("GET", "/instances/netvm/interfaces")
    assert [i["uuid"] for i in now] == [*(i["uuid"] for i in ifaces), plugged["uuid"]]

    status, body = await rest.call("DELETE", "/networks/net1")
    assert status == 403 and "netvm" in body["error"]
    status, body = await rest.call(
        "DELETE", "/networks", {"confirm": True, "namespace": "system", "clean_wait": False}
    )
    assert status == 403 and body["error"] == {"deleted": [], "unable": [net["uuid"]]}

    assert (await rest.call("DELETE", "/instances/netvm"))[0] == 200
    status, body = await rest.call(
        "POST", f"/instances/{inst['uuid']}/interfaces", {"network": netdesc("net1")}
    )
    assert status == 406 and "hot plug" in body["error"]
    for _ in range(200):
        if (await rest.call("GET", f"/instances/{inst['uuid']}"))[1]["state"] == "deleted":
            break
        await asyncio.sleep(0.05)
    status, after = await rest.call("GET", f"/instances/{inst['uuid']}/interfaces")
    assert status == 200 and {i["state"] for i in after} == {"deleted"}
    status, uuids = await rest.call(
        "DELETE", "/networks", {"confirm": True, "namespace": "system", "clean_wait": True}
    )
    assert (status, uuids) == (200, [net["uuid"]])


async def test_float_answers_507_when_the_pool_is_exhausted(rest: Rest) -> None:
    """The /29 pool has five addresses: one egress, four floats, then 507."""
    await make_network(rest)
    status, inst = await rest.call(
        "POST", "/instances", create_body("many", network=[netdesc("net1")] * 5)
    )
    assert status == 200, inst
    uuids = [i["uuid"] for i in (await created(rest, inst["uuid"]))["interfaces"]]
    for uuid in uuids[:4]:
        assert await rest.call("POST", f"/interfaces/{uuid}/float") == (200, None)
    status, body = await rest.call("POST", f"/interfaces/{uuids[4]}/float")
    assert status == 507 and "floating" in body["error"], body


BAD_INPUT = [
    ("POST", "/networks", {"netblock": "10.0.0.300/24", "name": "x"}, 400, "netblock"),
    ("POST", "/networks", {"netblock": "10.9.0.0/30", "name": "x"}, 400, "minimum size"),
    ("POST", "/networks", {"netblock": "10.9.0.0/24"}, 400, "missing name"),
    (
        "POST",
        "/networks",
        {"netblock": "10.9.0.0/24", "name": "x", "provide_nat": "no"},
        400,
        "bool",
    ),
    (
        "POST",
        "/networks",
        {"netblock": "10.9.0.0/24", "name": "x", "provide_dns": "yes"},
        400,
        "bool",
    ),
    ("POST", "/networks", {"netblock": "10.9.0.0/24", "name": "net1"}, 409, "exists"),
    ("POST", "/instances", create_body(network=[netdesc("nonet")]), 404, "not found"),
    ("POST", "/instances", create_body(network=[netdesc(UNKNOWN)]), 404, "not found"),
    (
        "POST",
        "/instances",
        create_body(network=[netdesc("net1", address="10.1.0.5")]),
        400,
        "not in",
    ),
    (
        "POST",
        "/instances",
        create_body(network=[netdesc("net1", address="10.0.0.1")]),
        409,
        "in use",
    ),
    ("POST", "/instances", create_body(network=[netdesc("net1", address="banana")]), 400, "IPv4"),
    ("POST", "/instances", create_body(network=[netdesc("net1", model="tulip")]), 400, "model"),
    ("POST", "/instances", create_body(network=[netdesc("net1", macaddress="zz")]), 400, "MAC"),
    ("POST", "/instances", create_body(network=["net1"]), 400, "netdesc"),
    ("POST", "/instances", create_body(network=[{"address": "10.0.0.5"}]), 400, "network_uuid"),
    ("POST", "/instances", create_body(network=[netdesc("net1", colour=1)]), 400, "colour"),
    ("POST", "/instances", create_body(network=[netdesc("net1", float="maybe")]), 400, "float"),
    ("POST", "/instances", create_body(network=[netdesc("net1", address=5)]), 400, "address"),
    ("POST", "/instances/nope/interfaces", {"network": netdesc("net1")}, 404, "not found"),
    ("POST", "/instances/nope/interfaces", {"network": "net1"}, 400, "network"),
    ("POST", "/instances/nope/interfaces", {}, 400, "missing network"),
    ("GET", "/instances/nope/interfaces", None, 404, "not found"),
    ("GET", "/networks/nonet", None, 404, "not found"),
    ("GET", f"/networks/{UNKNOWN}", None, 404, "not found"),
    ("GET", "/networks/floating", None, 404, "floating"),
    ("GET", "/networks/net1", {"bogus": 1}, 400, "bogus"),
    ("DELETE", "/networks/nonet", None, 404, "not found"),
    ("DELETE", "/networks", {"confirm": False}, 400, "confirm"),
    ("DELETE", "/networks", {"confirm": True}, 400, "namespace"),
    ("GET", "/networks/nonet/interfaces", None, 404, "not found"),
    ("GET", "/networks/nonet/addresses", None, 404, "not found"),
    ("GET", "/networks/nonet/events", None, 404, "not found"),
    ("GET", "/networks/net1/events", {"event_type": "gossip"}, 400, "gossip"),
    ("GET", "/networks/nonet/metadata", None, 404, "not found"),
    ("GET", "/interfaces/not-a-uuid", None, 400, "UUID"),
    ("GET", f"/interfaces/{UNKNOWN}", None, 404, "not found"),
    ("POST", "/interfaces/zzz/float", None, 400, "UUID"),
    ("POST", f"/interfaces/{UNKNOWN}/float", None, 404, "not found"),
    ("POST", f"/interfaces/{UNKNOWN}/defloat", None, 404, "not found"),
    ("GET", "/interfaces/zzz/metadata", None, 400, "UUID"),
    ("PUT", f"/interfaces/{UNKNOWN}/metadata/k", {"value": 1}, 404, "not found"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), BAD_INPUT)
async def test_bad_network_input_is_a_4xx_with_a_message(
    rest: Rest, method: str, path: str, body: Any, status: int, words: str
) -> None:
    """Bad netblocks, netdescs, references and UUIDs get the expected 4xx, never a 500."""
    await make_network(rest)
    got, answer = await rest.call(method, path, body)
    assert got == status, answer
    assert answer["status"] == status
    assert words.lower() in str(answer["error"]).lower()


async def test_another_namespace_sees_no_network_or_interface(rest: Rest) -> None:
    """Networks and interfaces of system are 404 to another namespace, which lists none."""
    net = await make_network(rest)
    _, inst = await rest.call("POST", "/instances", create_body(network=[netdesc("net1")]))
    iface = (await created(rest, inst["uuid"]))["interfaces"][0]["uuid"]
    status, _ = await rest.call(
        "POST", "/auth/namespaces", {"namespace": "other", "key_name": "k", "key": "other-key"}
    )
    assert status == 200
    other = Rest(rest.session, rest.url)
    await other.login("other", "other-key")
    assert await other.call("GET", "/networks", {"all": True}) == (200, [])
    for method, path, body in (
        ("GET", f"/networks/{net['uuid']}", None),
        ("GET", "/networks/net1", None),
        ("DELETE", f"/networks/{net['uuid']}", None),
        ("GET", f"/networks/{net['uuid']}/interfaces", None),
        ("GET", f"/networks/{net['uuid']}/addresses", None),
        ("GET", f"/networks/{net['uuid']}/events", None),
        ("GET", f"/networks/{net['uuid']}/metadata", None),
        ("GET", f"/interfaces/{iface}", None),
        ("POST", f"/interfaces/{iface}/float", None),
        ("POST", f"/interfaces/{iface}/defloat", None),
        ("GET", f"/interfaces/{iface}/metadata", None),
        ("PUT", f"/interfaces/{iface}/metadata/k", {"value": "v"}),
    ):
        status, answer = await other.call(method, path, body)
        assert status == 404, (method, path, answer)
    status, answer = await other.call(
        "POST", "/instances", create_body("theirs", network=[netdesc(net["uuid"])])
    )
    assert status == 404 and "not found" in answer["error"]
    status, mine = await other.call(
        "POST", "/networks", {"netblock": "10.0.0.0/24", "name": "net1"}
    )
    assert status == 200 and mine["namespace"] == "other" and mine["uuid"] != net["uuid"]


async def test_the_real_client_creates_a_network_with_dns(rest: Rest, fake_node: FakeNode) -> None:
    """shakenfist-client sends provide_dns once provide-dns is advertised; the node gets names."""
    client = await sf(rest.url)
    net = await asyncio.to_thread(
        client.allocate_network, "10.30.0.0/24", True, True, "dnsnet", None, True
    )
    assert net["provide_dns"] is True and net["state"] == "created"
    status, inst = await rest.call(
        "POST", "/instances", create_body(name="web", network=[netdesc("dnsnet")])
    )
    assert status == 200, inst
    await created(rest, inst["uuid"])
    config = fake_node.network.networks[net["uuid"]]
    assert config.provide_dns and config.dns_domain == "system.minicloud"
    assert [lease.hostname for lease in config.leases] == ["web"]
