"""Everyone who dials a control plane takes a list of addresses and carries on through the
next when one stops: the client library, the CLI, the REST gateway and node agents.

Two control planes, A and B, serve one shared store in this process (no leader
or command queues are needed for reads, for creates through the plane a node is
connected to, or for a node agent moving over).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import queue
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest

from client.api import Client, JsonDict
from client.cadir import CaDir
from client.cli import main as cli_main
from common.tlsfiles import TLSFiles
from controlplane.app import ControlPlane, start
from controlplane.store.memory import MemoryStore
from tests.component.conftest import SYSTEM_KEY, FakeNode, plane_settings, start_fake_node
from tests.component.test_gateway import Rest, start_gateway

SPEC: JsonDict = {"name": "", "cpus": 1, "memory": 256, "disks": [{"size_gb": 1}]}


def spec(name: str) -> JsonDict:
    return {**SPEC, "name": name}


def dead_address() -> str:
    """A loopback address nothing listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"127.0.0.1:{probe.getsockname()[1]}"


@dataclass
class Pair:
    """Control planes A and B over one store, and a node agent dialling [A, B]."""

    a: ControlPlane
    b: ControlPlane
    node: FakeNode

    @property
    def addresses(self) -> str:
        return f"127.0.0.1:{self.a.port},127.0.0.1:{self.b.port}"

    @property
    def b_address(self) -> str:
        return f"127.0.0.1:{self.b.port}"

    def client(self, addresses: str = "") -> Client:
        return Client(addresses or self.addresses, "system", SYSTEM_KEY, 10, plaintext=True)

    async def stop_a(self, abruptly: bool = False) -> None:
        """Stop A (abruptly: its server first, cutting every call off before it ends its
        node streams, as a crash would) and wait until the node agent is connected to B."""
        if abruptly:
            await self.a.server.stop(0)
        await self.a.stop(0)
        await wait_until(lambda: self.b.nodes.connected("node1"))


async def wait_until(predicate: Any, timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "timed out"
        await asyncio.sleep(0.02)


@pytest.fixture
async def pair(tmp_path: Path) -> AsyncIterator[Pair]:
    shared = MemoryStore()
    # One data folder: both sign tokens with the same key, as replicas of one cluster do.
    base = plane_settings(tmp_path / "cp")
    a = await start(dataclasses.replace(base, name="cp-a"), store=shared)
    b = await start(dataclasses.replace(base, name="cp-b"), store=shared)
    node = await start_fake_node(f"127.0.0.1:{a.port},127.0.0.1:{b.port}")
    assert a.nodes.connected("node1")
    yield Pair(a, b, node)
    await node.close()
    await b.stop(0)
    if a.port:
        await a.stop(0)


async def test_reads_and_creates_carry_on_through_b_when_a_stops(pair: Pair) -> None:
    """list, get and a create with a request id go through B once A is gone; the create
    retried with its id returns the instance the first try made."""

    def before() -> JsonDict:
        with pair.client() as client:
            return client.create(spec("first"), request_id="create-first")

    first = await asyncio.to_thread(before)
    await pair.stop_a()

    def after() -> tuple[list[JsonDict], JsonDict, JsonDict, JsonDict]:
        with pair.client() as client:
            listed = client.list_instances()
            got = client.get(first["uuid"])
            again = client.create(spec("first"), request_id="create-first")
            second = client.create(spec("second"), request_id="create-second")
            assert client.addresses.current == pair.b_address
            return listed, got, again, second

    listed, got, again, second = await asyncio.to_thread(after)
    assert [i["uuid"] for i in listed] == [first["uuid"]]
    assert got["spec"]["name"] == "first"
    assert again["uuid"] == first["uuid"]
    assert second["node"] == "node1"


async def test_the_node_agent_moves_to_b_and_b_reconciles_it(pair: Pair) -> None:
    """A's stop sends the agent to the next address; B then places creates on it."""
    await pair.stop_a()
    assert pair.node.stream.target == pair.b_address

    def create() -> JsonDict:
        with pair.client() as client:
            made = client.create(spec("on-b"))
            return client.wait(made["uuid"], lambda i: i["state"] == "created", timeout=10)

    made = await asyncio.to_thread(create)
    assert made["node"] == "node1"


async def test_a_dead_first_address_works_from_the_start(pair: Pair) -> None:
    """[dead, B] answers at once: a node agent registers with B, the client creates on it."""
    addresses = f"{dead_address()},{pair.b_address}"
    other = await start_fake_node(addresses, name="node2")
    try:
        assert pair.b.nodes.connected("node2")

        def use() -> tuple[JsonDict, list[JsonDict]]:
            with pair.client(addresses) as client:
                return client.create(spec("via-b")), client.list_instances()

        made, listed = await asyncio.to_thread(use)
        assert made["node"] == "node2"
        assert [i["spec"]["name"] for i in listed] == ["via-b"]
    finally:
        await other.close()


async def test_one_address_fails_as_before(pair: Pair) -> None:
    """A single dead address is not retried: the call's own UNAVAILABLE goes to the caller."""

    def use() -> None:
        with pair.client(dead_address()) as client:
            client.list_instances()

    with pytest.raises(grpc.RpcError) as caught:
        await asyncio.to_thread(use)
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_the_cli_lists_through_b(pair: Pair, capsys: pytest.CaptureFixture[str]) -> None:
    """minicloud --api A,B instance list answers after A's stop."""
    await asyncio.to_thread(lambda: pair.client().create(spec("cli-vm")))
    await pair.stop_a()
    argv = ["--api", pair.addresses, "--plaintext", "--key", SYSTEM_KEY, "--json"]
    code = await asyncio.to_thread(cli_main, [*argv, "instance", "list"])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert [i["spec"]["name"] for i in json.loads(out)] == ["cli-vm"]


async def test_the_gateway_serves_get_instances_through_b(pair: Pair) -> None:
    """A gateway given A,B logs in and lists instances after A's stop."""
    await asyncio.to_thread(lambda: pair.client().create(spec("rest-vm")))
    runner, url = await start_gateway(pair.addresses)
    try:
        async with aiohttp.ClientSession() as session:
            rest = Rest(session, url)
            await rest.login()
            await pair.stop_a()
            status, listed = await rest.call("GET", "/instances")
            assert status == 200, listed
            assert [i["name"] for i in listed] == ["rest-vm"]
            await rest.login()  # the token check and the login go through B too
            status, listed = await rest.call("GET", "/instances")
            assert status == 200, listed
            async with session.get(url + "/readyz") as ready:
                assert ready.status == 200
    finally:
        await runner.cleanup()


async def test_a_gateway_with_a_dead_first_address_works_from_the_start(pair: Pair) -> None:
    """[dead, B]: login, create and list all go to B."""
    runner, url = await start_gateway(f"{dead_address()},{pair.b_address}")
    try:
        async with aiohttp.ClientSession() as session:
            rest = Rest(session, url)
            await rest.login()
            await pair.stop_a()  # the node agent moves to B, so B can place the create
            body = {"name": "rest-b", "cpus": 1, "memory": 256, "disk": [{"size": 1}]}
            status, made = await rest.call("POST", "/instances", body)
            assert status == 200, made
            status, listed = await rest.call("GET", "/instances")
            assert [i["name"] for i in listed] == ["rest-b"]
    finally:
        await runner.cleanup()


async def test_a_watch_survives_a_stopping_and_says_it_resubscribed(pair: Pair) -> None:
    """The Watch iterator marks its re-subscription on B, then shows changes made there."""
    made = await asyncio.to_thread(lambda: pair.client().create(spec("watched")))
    updates: queue.Queue[JsonDict] = queue.Queue()
    client = pair.client()

    def watch() -> None:
        try:
            for update in client.watch(made["uuid"]):
                updates.put(update)
        except Exception as exc:  # reported to the test below
            updates.put({"error": repr(exc)})

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    first = await asyncio.to_thread(updates.get, timeout=10)
    assert first["instance"]["uuid"] == made["uuid"]
    await pair.stop_a()
    seen = [await asyncio.to_thread(updates.get, timeout=10)]
    assert seen[0] == {"resubscribed": {"address": pair.b_address}}
    await asyncio.to_thread(lambda: pair.client(pair.b_address).power(made["uuid"], "off"))

    def drained() -> Iterator[JsonDict]:
        while True:
            update = updates.get(timeout=10)
            yield update
            if update.get("instance", {}).get("power_state") == "off":
                return

    seen.extend(await asyncio.to_thread(lambda: list(drained())))
    assert not [u for u in seen if "error" in u]
    client.close()


async def test_an_execute_stream_that_loses_a_waits_for_its_operation_through_b(
    pair: Pair,
) -> None:
    """Output streams from A; after A's stop the client waits for the operation via B and
    returns it as it ends."""
    from tests.component.test_agent_ops import GuestAgent

    def create() -> JsonDict:
        with pair.client() as client:
            made = client.create({**spec("ga"), "side_channels": ["sf-agent"]})
            return client.wait(made["uuid"], lambda i: i["state"] == "created", timeout=10)

    made = await asyncio.to_thread(create)
    guest = GuestAgent(pair.node.agent_socket(made["uuid"]))
    guest.start()
    try:
        client = pair.client()
        await asyncio.to_thread(
            client.wait, made["uuid"], lambda i: i["agent_state"] == "ready", 20
        )
        started = threading.Event()
        chunks: list[bytes] = []

        def output(_stream: str, data: bytes) -> None:
            chunks.append(data)
            started.set()

        running = asyncio.create_task(
            asyncio.to_thread(
                client.execute_stream, made["uuid"], "echo one; sleep 2; echo two", output
            )
        )
        assert await asyncio.to_thread(started.wait, 20)
        await pair.stop_a(abruptly=True)
        final = await asyncio.wait_for(running, 30)
        assert b"one" in b"".join(chunks)
        assert client.addresses.current == pair.b_address
        # The operation as B records it, not the broken stream's UNAVAILABLE. Today a
        # control plane fails the operations of a node that disconnects; once node
        # commands are queued in the store it completes instead.
        listed = await asyncio.to_thread(client.agent_operations, made["uuid"], True)
        assert [op["uuid"] for op in listed] == [final["uuid"]]
        if final["state"] == "complete":
            assert "two" in final["results"]["0"]["stdout"]
        else:
            assert (final["state"], final["error_message"]) == ("error", "node node1 disconnected")
        client.close()
    finally:
        guest.stop()


async def test_tls_settings_apply_to_every_address(tmp_path: Path) -> None:
    """With the cluster's CA and a node certificate, client and node agent move to B."""
    from tests.component.test_node_tls import NOW, Tls

    ca = CaDir(tmp_path / "ca")
    ca.init(NOW)
    ca.issue("server", "controlplane", NOW, sans=("127.0.0.1",))
    issued = ca.issued
    settings = dataclasses.replace(
        plane_settings(tmp_path / "cp"),
        tls=TLSFiles(
            str(issued / "controlplane.crt"),
            str(issued / "controlplane.key"),
            str(ca.path / "ca.crt"),
        ),
        node_listen="127.0.0.1:0",
    )
    shared = MemoryStore()
    a = await start(dataclasses.replace(settings, name="cp-a"), store=shared)
    b = await start(dataclasses.replace(settings, name="cp-b"), store=shared)
    material = Tls(a, ca).node_material("node1")
    node = await start_fake_node(f"127.0.0.1:{a.node_port},127.0.0.1:{b.node_port}", tls=material)
    try:
        await a.stop(0)
        await wait_until(lambda: b.nodes.connected("node1"))
        public = f"127.0.0.1:{a.port},127.0.0.1:{b.port}"

        def use() -> JsonDict:
            ca_file = str(ca.path / "ca.crt")
            with Client(public, "system", SYSTEM_KEY, 10, ca_file=ca_file) as client:
                return client.create(spec("secure"))

        made = await asyncio.to_thread(use)
        assert made["node"] == "node1"
    finally:
        await node.close()
        await b.stop(0)


async def test_a_console_session_attaches_again_through_b(pair: Pair) -> None:
    """A console attached through A is cut off by A's crash; it attaches again through B
    and what is typed there reaches the console."""

    def create() -> JsonDict:
        with pair.client() as client:
            made = client.create(spec("tty"))
            return client.wait(made["uuid"], lambda i: i["state"] == "created", timeout=10)

    made = await asyncio.to_thread(create)
    keys: queue.Queue[bytes | None] = queue.Queue()
    seen: queue.Queue[bytes] = queue.Queue()
    client = pair.client()

    def keystrokes() -> Iterator[bytes]:
        while (data := keys.get()) is not None:
            yield data

    output = await asyncio.to_thread(client.attach, made["uuid"], keystrokes())

    def read() -> None:
        with contextlib.suppress(grpc.RpcError):
            for data in output:
                seen.put(data)

    def read_until(wanted: bytes) -> bytes:
        found = b""
        while wanted not in found:
            found += seen.get(timeout=10)
        return found

    threading.Thread(target=read, daemon=True).start()
    banner = f"fake console of {made['uuid']}".encode()
    await asyncio.to_thread(read_until, banner)
    await pair.stop_a(abruptly=True)
    await asyncio.to_thread(read_until, banner)  # attached again, through B
    assert output.conn.target == pair.b_address
    keys.put(b"echo again\r")
    await asyncio.to_thread(read_until, b"echo again")
    output.cancel()
    keys.put(None)
    client.close()
