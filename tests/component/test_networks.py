"""Networks and interfaces through the real gRPC API, with fake nodes and a fake data plane."""

from __future__ import annotations

import asyncio
import ipaddress
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from controlplane.app import ControlPlane, start
from protos import (
    common_pb2,
    instances_pb2,
    metadata_pb2,
    metadata_pb2_grpc,
    networks_pb2,
    networks_pb2_grpc,
)
from tests.component.conftest import (
    Api,
    Authed,
    FakeNode,
    bearer,
    create_request,
    namespace_api,
    plane_settings,
    start_fake_node,
)


@dataclass
class Net:
    """Clients of one namespace: instances, networks, interfaces."""

    api: Api
    nets: Any
    ifaces: Any


async def clients(channel: grpc.aio.Channel, api: Api) -> Net:
    return Net(
        api,
        Authed(networks_pb2_grpc.NetworkServiceStub(channel), api.metadata),
        Authed(networks_pb2_grpc.InterfaceServiceStub(channel), api.metadata),
    )


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[tuple[ControlPlane, grpc.aio.Channel, Net]]:
    """A plane with a small floating pool (a /28), and system clients."""
    settings = replace(plane_settings(tmp_path / "cp"), floating_netblock="192.168.250.0/28")
    plane = await start(settings)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        api = Api(channel, await bearer(channel))
        yield plane, channel, await clients(channel, api)
    await plane.stop(0)


@pytest.fixture
async def node1(cloud: tuple[ControlPlane, grpc.aio.Channel, Net]) -> AsyncIterator[FakeNode]:
    fake = await start_fake_node(
        f"127.0.0.1:{cloud[0].port}", "node1", memory_mb=16384, address="192.0.2.1"
    )
    yield fake
    await fake.stop()


@pytest.fixture
def c(cloud: tuple[ControlPlane, grpc.aio.Channel, Net]) -> Net:
    return cloud[2]


async def eventually(check: Callable[[], bool], what: str, timeout: float = 5) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


def net_request(name: str = "net1", netblock: str = "10.0.0.0/24", **kw: Any) -> Any:
    kw.setdefault("provide_dhcp", True)
    kw.setdefault("provide_nat", True)
    return networks_pb2.CreateNetworkRequest(name=name, netblock=netblock, **kw)


async def addresses(c: Net, ref: str) -> dict[str, str]:
    reply = await c.nets.ListAddresses(networks_pb2.NetworkRef(ref=ref))
    return {a.address: a.type for a in reply.addresses}


async def running(c: Net, name: str, **spec: Any) -> instances_pb2.Instance:
    inst = await c.api.Create(create_request(name, **spec))
    return await c.api.wait_for(inst.uuid, lambda i: i.state == "created")


async def test_a_network_reserves_network_gateway_broadcast_and_egress(c: Net) -> None:
    """A new network is created with a VXLAN id, and its special addresses are reserved."""
    net = await c.nets.Create(net_request(netblock="10.1.2.3/24"))
    assert (net.state, net.netblock, net.provide_nat) == ("created", "10.1.2.0/24", True)
    assert 0 < net.vxlan_id < 2**24
    assert ipaddress.ip_address(net.floating_gateway) in ipaddress.ip_network("192.168.250.0/28")
    assert await addresses(c, "net1") == {
        "10.1.2.0": "network",
        "10.1.2.1": "gateway",
        "10.1.2.255": "broadcast",
        net.floating_gateway: "egress",
    }
    assert (await c.nets.Get(networks_pb2.NetworkRef(ref=net.uuid))).name == "net1"
    events = await c.nets.GetEvents(instances_pb2.GetEventsRequest(ref="net1"))
    assert "state changed from initial to created" in [e.message for e in events.events]


@pytest.mark.parametrize(
    ("netblock", "words"),
    [
        ("10.0.0.0/30", "minimum size of /29"),
        ("banana", "cannot parse netblock"),
        ("fd00::/64", "IPv4"),
    ],
)
async def test_bad_netblocks_are_refused(c: Net, netblock: str, words: str) -> None:
    """A /30, an unparseable netblock and IPv6 are refused with INVALID_ARGUMENT."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.nets.Create(net_request(netblock=netblock))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in str(err.value.details())
    assert not (await c.nets.List(networks_pb2.ListNetworksRequest())).networks


async def test_network_names_are_unique_per_namespace(c: Net) -> None:
    """A second live network with the same name in a namespace is ALREADY_EXISTS."""
    await c.nets.Create(net_request())
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.nets.Create(net_request(netblock="10.9.0.0/24"))
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_interfaces_are_allocated_in_order_and_reach_the_node(
    c: Net, node1: FakeNode
) -> None:
    """Interfaces get addresses in their netblocks and unique MACs; the node builds them."""
    a = await c.nets.Create(net_request("a", "10.0.0.0/24"))
    b = await c.nets.Create(net_request("b", "10.5.0.0/29", provide_nat=False))
    inst = await running(
        c,
        "vm1",
        networks=[
            {"network_uuid": "a"},
            {"network_uuid": b.uuid, "address": "10.5.0.4", "model": "e1000"},
        ],
    )
    assert [(i.order, i.network_uuid) for i in inst.interfaces] == [(0, a.uuid), (1, b.uuid)]
    first, second = inst.interfaces
    assert ipaddress.ip_address(first.ipv4) in ipaddress.ip_network("10.0.0.0/24")
    assert first.ipv4 not in ("10.0.0.0", "10.0.0.1", "10.0.0.255")
    assert (second.ipv4, second.model) == ("10.5.0.4", "e1000")
    assert all(i.macaddr.startswith("02:00:00:") for i in inst.interfaces)
    assert first.macaddr != second.macaddr
    assert [n.network_uuid for n in inst.spec.networks] == [a.uuid, b.uuid]

    listed = await c.ifaces.ListForInstance(instances_pb2.InstanceRef(ref="vm1"))
    assert [i.state for i in listed.interfaces] == ["created", "created"]
    on_a = await c.nets.ListInterfaces(networks_pb2.NetworkRef(ref="a"))
    assert [i.instance_uuid for i in on_a.interfaces] == [inst.uuid]
    assert (await addresses(c, "b"))["10.5.0.4"] == "instance"

    config = node1.network.networks[a.uuid]
    assert config.services_here and config.vni == a.vxlan_id and config.gateway == "10.0.0.1"
    assert [(x.mac, x.address) for x in config.leases] == [(first.macaddr, first.ipv4)]
    assert config.egress_address.endswith("/28") and config.egress_gateway == "192.168.250.1"
    assert node1.network.networks[b.uuid].egress_address == ""
    nics = node1.hypervisor.specs[inst.uuid].interfaces
    assert [(n.mac, n.model, n.bridge) for n in nics] == [
        (first.macaddr, "virtio", node1.network.bridge_name(a.uuid)),
        (second.macaddr, "e1000", node1.network.bridge_name(b.uuid)),
    ]
    assert (await c.nets.Get(networks_pb2.NetworkRef(ref="a"))).services_node == "node1"


BAD_SPECS = [
    ("unknown network", [{"network_uuid": "nosuch"}], grpc.StatusCode.NOT_FOUND, "not found"),
    ("outside", [{"network_uuid": "n", "address": "10.7.0.9"}], "INVALID_ARGUMENT", "not in"),
    ("gateway", [{"network_uuid": "n", "address": "10.0.0.1"}], "ALREADY_EXISTS", "in use"),
    ("taken", [{"network_uuid": "n", "address": "10.0.0.50"}], "ALREADY_EXISTS", "in use"),
    ("not ip", [{"network_uuid": "n", "address": "10.0.0.x"}], "INVALID_ARGUMENT", "IPv4"),
    ("bad mac", [{"network_uuid": "n", "macaddress": "zz"}], "INVALID_ARGUMENT", "MAC"),
    (
        "mac taken",
        [{"network_uuid": "n", "macaddress": "02:00:00:00:00:50"}],
        "ALREADY_EXISTS",
        "MAC",
    ),
    ("model", [{"network_uuid": "n", "model": "tulip"}], "INVALID_ARGUMENT", "model"),
    (
        "second bad",
        [{"network_uuid": "n"}, {"network_uuid": "n", "address": "10.0.0.50"}],
        "ALREADY_EXISTS",
        "network 1",
    ),
    (
        "float without nat",
        [{"network_uuid": "nonat", "float": True}],
        "FAILED_PRECONDITION",
        "NAT",
    ),
]


@pytest.mark.parametrize(
    ("case", "networks", "code", "words"), BAD_SPECS, ids=[b[0] for b in BAD_SPECS]
)
async def test_bad_interface_specs_are_refused_and_allocate_nothing(
    c: Net, node1: FakeNode, case: str, networks: list[Any], code: Any, words: str
) -> None:
    """Unknown networks, addresses outside or taken, bad or taken MACs, bad models are refused."""
    await c.nets.Create(net_request("n", "10.0.0.0/24"))
    await c.nets.Create(net_request("nonat", "10.3.0.0/24", provide_nat=False))
    holder = await running(
        c,
        "holder",
        networks=[{"network_uuid": "n", "address": "10.0.0.50", "macaddress": "02:00:00:00:00:50"}],
    )
    before = await addresses(c, "n")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.api.Create(create_request("bad", networks=networks))
    expected = code if isinstance(code, grpc.StatusCode) else getattr(grpc.StatusCode, code)
    assert err.value.code() == expected, err.value.details()
    assert words in str(err.value.details())
    assert await addresses(c, "n") == before
    listed = await c.api.List(instances_pb2.ListInstancesRequest(include_deleted=True))
    assert [i.uuid for i in listed.instances] == [holder.uuid]
    on_n = await c.nets.ListInterfaces(networks_pb2.NetworkRef(ref="n"))
    assert len(on_n.interfaces) == 1


async def test_deleting_an_instance_releases_its_interfaces(c: Net, node1: FakeNode) -> None:
    """A deleted instance's addresses and MACs are free again; its interfaces are deleted."""
    net = await c.nets.Create(net_request())
    spec = [{"network_uuid": "net1", "address": "10.0.0.7", "macaddress": "02:00:00:aa:bb:cc"}]
    inst = await running(c, "vm1", networks=spec)
    iface = inst.interfaces[0].uuid
    await c.api.Delete(instances_pb2.InstanceRef(ref="vm1"))
    await c.api.wait_for(inst.uuid, lambda i: i.state == "deleted")
    assert "10.0.0.7" not in await addresses(c, "net1")
    assert (await c.ifaces.Get(networks_pb2.InterfaceRef(uuid=iface))).state == "deleted"
    assert not (await c.nets.ListInterfaces(networks_pb2.NetworkRef(ref="net1"))).interfaces
    await eventually(lambda: not node1.network.networks[net.uuid].leases, "leases emptied")
    again = await running(c, "vm2", networks=spec)
    assert again.interfaces[0].ipv4 == "10.0.0.7"


async def test_clean_delete_releases_more_interfaces_than_one_store_batch(
    c: Net, node1: FakeNode
) -> None:
    """A clean delete releases 36 interfaces of instances stuck deleting (over MAX_BATCH ops)."""
    await c.nets.Create(net_request())
    specs = [{"network_uuid": "net1"}] * 12
    stuck = [await running(c, f"vm{i}", networks=specs) for i in (1, 2, 3)]
    await node1.stop()  # the deletes wait for the node
    for inst in stuck:
        await c.api.Delete(instances_pb2.InstanceRef(ref=inst.uuid))
    deleted = await c.nets.Delete(networks_pb2.DeleteNetworkRequest(ref="net1", clean=True))
    assert deleted.state == "deleted"
    for inst in stuck:
        for nic in inst.interfaces:
            iface = await c.ifaces.Get(networks_pb2.InterfaceRef(uuid=nic.uuid))
            assert iface.state == "deleted"


async def test_a_network_in_use_cannot_be_deleted(c: Net, node1: FakeNode) -> None:
    """Delete is FAILED_PRECONDITION while a live instance uses the network; then it goes."""
    net = await c.nets.Create(net_request())
    inst = await running(c, "vm1", networks=[{"network_uuid": "net1"}])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.nets.Delete(networks_pb2.DeleteNetworkRequest(ref="net1", clean=True))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "vm1" in str(err.value.details())
    await c.api.Delete(instances_pb2.InstanceRef(ref="vm1"))
    await c.api.wait_for(inst.uuid, lambda i: i.state == "deleted")
    deleted = await c.nets.Delete(networks_pb2.DeleteNetworkRequest(ref="net1"))
    assert deleted.state == "deleted"
    await eventually(lambda: net.uuid not in node1.network.networks, "network removed")
    assert node1.network.remove_calls >= 1
    assert not (await c.nets.List(networks_pb2.ListNetworksRequest())).networks
    await c.nets.Create(net_request())  # the name is free again
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.nets.Delete(networks_pb2.DeleteNetworkRequest(ref="floating"))
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_another_namespace_cannot_see_or_use_a_network(
    cloud: tuple[ControlPlane, grpc.aio.Channel, Net], node1: FakeNode
) -> None:
    """Another namespace's network is NOT_FOUND, by name or UUID, for reads and instances."""
    _, channel, c = cloud
    net = await c.nets.Create(net_request())
    other = await clients(channel, await namespace_api(channel, "other"))
    for ref in ("net1", net.uuid):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await other.nets.Get(networks_pb2.NetworkRef(ref=ref))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await other.api.Create(create_request("vm", networks=[{"network_uuid": ref}]))
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert not (await other.nets.List(networks_pb2.ListNetworksRequest())).networks
    # Its own network of the same name is its own.
    mine = await other.nets.Create(net_request())
    assert mine.uuid != net.uuid and mine.vxlan_id != net.vxlan_id
    inst = await running(c, "vm1", networks=[{"network_uuid": "net1"}])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await other.ifaces.Get(networks_pb2.InterfaceRef(uuid=inst.interfaces[0].uuid))
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


async def test_two_nodes_carry_a_network_as_peers(
    cloud: tuple[ControlPlane, grpc.aio.Channel, Net], node1: FakeNode
) -> None:
    """A second node with an interface gets the network with the first as peer, and vice versa."""
    plane, _, c = cloud
    net = await c.nets.Create(net_request())
    await running(c, "vm1", networks=[{"network_uuid": "net1"}])
    node2 = await start_fake_node(
        f"127.0.0.1:{plane.port}", "node2", memory_mb=65536, address="192.0.2.2"
    )
    try:
        vm2 = await running(c, "vm2", networks=[{"network_uuid": "net1"}])
        assert vm2.node == "node2"
        await eventually(lambda: net.uuid in node2.network.networks, "node2 carries it")
        on2 = node2.network.networks[net.uuid]
        assert (on2.services_here, on2.peers, on2.egress_address) == (False, ("192.0.2.1",), "")
        await eventually(
            lambda: node1.network.networks[net.uuid].peers == ("192.0.2.2",), "node1 peers"
        )
        assert len(node1.network.networks[net.uuid].leases) == 2
        await c.api.Delete(instances_pb2.InstanceRef(ref="vm2"))
        await eventually(lambda: net.uuid not in node2.network.networks, "node2 removed it")
        await eventually(lambda: node1.network.networks[net.uuid].peers == (), "node1 alone")
    finally:
        await node2.stop()


async def test_hot_plug_adds_an_interface_to_a_running_instance(c: Net, node1: FakeNode) -> None:
    """Attach allocates the next interface, the node plugs it in, and it is listed."""
    a = await c.nets.Create(net_request("a", "10.0.0.0/24"))
    b = await c.nets.Create(net_request("b", "10.6.0.0/24"))
    inst = await running(c, "vm1", networks=[{"network_uuid": "a"}])
    iface = await c.ifaces.Attach(
        networks_pb2.AttachInterfaceRequest(
            instance="vm1", network=common_pb2.NetworkSpec(network_uuid="b", address="10.6.0.9")
        )
    )
    assert (iface.order, iface.ipv4, iface.state, iface.network_uuid) == (
        1,
        "10.6.0.9",
        "created",
        b.uuid,
    )
    nics = node1.hypervisor.specs[inst.uuid].interfaces
    assert [n.network_uuid for n in nics] == [a.uuid, b.uuid]
    assert nics[1].bridge == node1.network.bridge_name(b.uuid)
    got = await c.api.Get(instances_pb2.InstanceRef(ref="vm1"))
    assert [i.uuid for i in got.interfaces] == [inst.interfaces[0].uuid, iface.uuid]
    assert node1.network.networks[b.uuid].leases[0].address == "10.6.0.9"
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.ifaces.Attach(
            networks_pb2.AttachInterfaceRequest(
                instance="vm1", network=common_pb2.NetworkSpec(network_uuid="b", address="10.6.0.9")
            )
        )
    assert err.value.code() == grpc.StatusCode.ALREADY_EXISTS


async def test_float_and_defloat_use_the_pool(c: Net, node1: FakeNode) -> None:
    """Floating reserves a pool address, the services node DNATs it; defloat frees it."""
    net = await c.nets.Create(net_request())
    inst = await running(c, "vm1", networks=[{"network_uuid": "net1", "float": True}])
    first = await c.ifaces.Get(networks_pb2.InterfaceRef(uuid=inst.interfaces[0].uuid))
    pool = ipaddress.ip_network("192.168.250.0/28")
    assert ipaddress.ip_address(first.floating) in pool
    await c.ifaces.Defloat(networks_pb2.InterfaceRef(uuid=first.uuid))
    await eventually(lambda: not node1.network.networks[net.uuid].floating, "defloated")
    floated = await c.ifaces.Float(networks_pb2.InterfaceRef(uuid=first.uuid))
    assert ipaddress.ip_address(floated.floating) in pool
    await eventually(
        lambda: (
            [(f.address, f.inner_address) for f in node1.network.networks[net.uuid].floating]
            == [(floated.floating, first.ipv4)]
        ),
        "floating on the services node",
    )
    # 16 addresses: 3 reserved, 1 egress, 1 floated; 11 more floats exhaust the pool.
    more = await running(c, "vm2", networks=[{"network_uuid": "net1"}] * 12)
    for iface in more.interfaces[:11]:
        await c.ifaces.Float(networks_pb2.InterfaceRef(uuid=iface.uuid))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.ifaces.Float(networks_pb2.InterfaceRef(uuid=more.interfaces[11].uuid))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.nets.Create(net_request("net2", "10.8.0.0/24"))
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_a_reconnecting_node_gets_its_networks_and_drops_strays(
    cloud: tuple[ControlPlane, grpc.aio.Channel, Net], node1: FakeNode
) -> None:
    """After an agent restart the node is sent the networks it carries; unknown ones go."""
    plane, _, c = cloud
    net = await c.nets.Create(net_request())
    await running(c, "vm1", networks=[{"network_uuid": "net1"}])
    network = node1.network
    stray = replace(network.networks[net.uuid], uuid="0b6c1a66-0000-4000-8000-000000000001")
    network.networks[stray.uuid] = stray
    network.networks.pop(net.uuid)
    await node1.stop()
    again = await start_fake_node(
        f"127.0.0.1:{plane.port}", "node1", hypervisor=node1.hypervisor, network=network
    )
    try:
        await eventually(lambda: stray.uuid not in network.networks, "stray removed")
        await eventually(lambda: net.uuid in network.networks, "network ensured again")
    finally:
        await again.stop()


async def test_networks_and_interfaces_have_metadata(
    cloud: tuple[ControlPlane, grpc.aio.Channel, Net], node1: FakeNode
) -> None:
    """MetadataService works on object types network and interface."""
    _, channel, c = cloud
    meta = Authed(metadata_pb2_grpc.MetadataServiceStub(channel), c.api.metadata)
    await c.nets.Create(net_request())
    inst = await running(c, "vm1", networks=[{"network_uuid": "net1"}])
    for kind, ref in (("network", "net1"), ("interface", inst.interfaces[0].uuid)):
        got = await meta.Set(
            metadata_pb2.SetMetadataRequest(
                object_type=kind, ref=ref, key="role", value=struct_pb2.Value(string_value="web")
            )
        )
        assert dict(got.metadata) == {"role": "web"}
    shown = await c.nets.Get(networks_pb2.NetworkRef(ref="net1"))
    assert dict(shown.metadata) == {"role": "web"}


async def test_a_network_with_dns_tells_the_node_its_instances_names(
    cloud: tuple[ControlPlane, grpc.aio.Channel, Net], node1: FakeNode
) -> None:
    """The node gets NAMESPACE.ZONE and each instance's name; names follow instances."""
    _, channel, _ = cloud
    c = await clients(channel, await namespace_api(channel, "team-a"))
    net = await c.nets.Create(net_request(provide_dns=True))
    assert net.provide_dns
    vm1 = await running(c, "vm1", networks=[{"network_uuid": "net1"}])
    vm2 = await running(c, "vm2", networks=[{"network_uuid": "net1"}])

    def names() -> set[tuple[str, str]]:
        return {(x.hostname, x.address) for x in node1.network.networks[net.uuid].leases}

    config = node1.network.networks[net.uuid]
    assert config.provide_dns and config.dns_domain == "team-a.minicloud"
    assert config.dns_upstream == ()
    assert names() == {("vm1", vm1.interfaces[0].ipv4), ("vm2", vm2.interfaces[0].ipv4)}
    drive = node1.disks.drives[vm1.uuid]["openstack/latest/network_data.json"]
    data = json.loads(drive)
    assert data["networks"][0]["dns_nameservers"] == ["10.0.0.1"]
    assert data["networks"][0]["dns_search"] == ["team-a.minicloud"]
    assert data["services"] == [{"type": "dns", "address": "10.0.0.1"}]

    await c.api.Delete(instances_pb2.InstanceRef(ref="vm2"))
    await eventually(lambda: names() == {("vm1", vm1.interfaces[0].ipv4)}, "vm2's name gone")
    vm3 = await running(c, "vm3")
    iface = await c.ifaces.Attach(
        networks_pb2.AttachInterfaceRequest(
            instance="vm3", network=common_pb2.NetworkSpec(network_uuid="net1")
        )
    )
    await eventually(lambda: ("vm3", iface.ipv4) in names(), "a hot-plugged instance's name")
    assert vm3.uuid != vm1.uuid


async def test_a_network_without_dns_sends_no_domain(c: Net, node1: FakeNode) -> None:
    """Without provide_dns the node is told no domain; the config drive names no DNS server."""
    net = await c.nets.Create(net_request())
    inst = await running(c, "vm1", networks=[{"network_uuid": "net1"}])
    config = node1.network.networks[net.uuid]
    assert not config.provide_dns and config.dns_domain == ""
    assert [x.hostname for x in config.leases] == ["vm1"]
    data = json.loads(node1.disks.drives[inst.uuid]["openstack/latest/network_data.json"])
    assert "dns_nameservers" not in data["networks"][0] and data["services"] == []


async def test_dns_needs_a_namespace_that_can_be_a_dns_label(
    cloud: tuple[ControlPlane, grpc.aio.Channel, Net],
) -> None:
    """A namespace with an underscore cannot have DNS networks: INVALID_ARGUMENT, nothing made."""
    _, channel, _ = cloud
    c = await clients(channel, await namespace_api(channel, "team_b"))
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await c.nets.Create(net_request(provide_dns=True))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "DNS" in str(err.value.details())
    assert not (await c.nets.List(networks_pb2.ListNetworksRequest())).networks
