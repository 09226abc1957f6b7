"""Logs that follow a request: its id, namespace and instance, from the API to the node agent."""

from __future__ import annotations

from collections.abc import Iterator, MutableMapping
from contextlib import contextmanager
from typing import Any

import grpc
import structlog

from controlplane.app import ControlPlane
from protos import consoles_pb2, consoles_pb2_grpc, instances_pb2
from tests.component.conftest import Api, FakeNode, authed, create_request


@contextmanager
def captured() -> Iterator[list[dict[str, Any]]]:
    """Every log event of this process, with its context variables merged in.

    The session's processor chain is extended in place: loggers cache the
    chain on first use, so configuring a new one would miss them.
    """
    events: list[dict[str, Any]] = []

    def keep(_: Any, __: str, event: MutableMapping[str, Any]) -> MutableMapping[str, Any]:
        events.append(dict(event))
        return event

    chain = structlog.get_config()["processors"]
    assert chain[0] is structlog.contextvars.merge_contextvars
    chain.insert(1, keep)
    try:
        yield events
    finally:
        chain.remove(keep)


def is_on(inst: instances_pb2.Instance) -> bool:
    return inst.state == "created" and inst.power_state == "on"


async def test_a_callers_request_id_reaches_the_node_agents_logs(api: Api, node: FakeNode) -> None:
    """A create sent with x-request-id logs that id on the control plane and on the node."""
    with captured() as events:
        inst = await api.Create(create_request("traced"), metadata=(("x-request-id", "trace-1"),))
        await api.wait_for(inst.uuid, is_on)
    created = [e for e in events if e["event"] == "instance created"]
    assert len(created) == 1
    assert created[0]["request_id"] == "trace-1"
    assert created[0]["namespace"] == "system"
    assert created[0]["instance"] == inst.uuid
    assert created[0]["rpc"] == "Create"
    done = [e for e in events if e["event"] == "command done" and e.get("uuid") == inst.uuid]
    assert done, "the node agent logged no finished command for the instance"
    assert {e.get("request_id") for e in done} == {"trace-1"}
    assert {e.get("target") for e in done} == {inst.uuid}


async def test_a_request_without_an_id_gets_one_that_the_node_sees_too(
    api: Api, node: FakeNode
) -> None:
    """A call without a usable x-request-id gets a fresh id, carried to the node the same way."""
    with captured() as events:
        inst = await api.Create(create_request("untraced"), metadata=(("x-request-id", "a b"),))
        await api.wait_for(inst.uuid, is_on)
    (created,) = [e for e in events if e["event"] == "instance created"]
    assert created["request_id"] not in ("", "a b")
    done = [e for e in events if e["event"] == "command done" and e.get("uuid") == inst.uuid]
    assert {e.get("request_id") for e in done} == {created["request_id"]}


async def test_requests_do_not_share_context(api: Api, node: FakeNode) -> None:
    """Two calls with different ids log each its own id, never the other's."""
    with captured() as events:
        one = await api.Create(create_request("one"), metadata=(("x-request-id", "r-one"),))
        two = await api.Create(create_request("two"), metadata=(("x-request-id", "r-two"),))
        await api.wait_for(one.uuid, is_on)
        await api.wait_for(two.uuid, is_on)
    for inst, rid in ((one, "r-one"), (two, "r-two")):
        mine = [e for e in events if e.get("instance") == inst.uuid or e.get("uuid") == inst.uuid]
        assert mine
        assert {e.get("request_id") for e in mine if "request_id" in e} == {rid}


async def test_a_console_read_is_followed_to_the_node_too(
    api: Api, node: FakeNode, plane: ControlPlane
) -> None:
    """Commands outside the create path (a console read) carry the caller's request id too."""
    inst = await api.Create(create_request("reader"))
    await api.wait_for(inst.uuid, is_on)
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        consoles = await authed(consoles_pb2_grpc.ConsoleServiceStub, channel)
        with captured() as events:
            await consoles.GetConsoleData(
                consoles_pb2.ConsoleDataRequest(ref=inst.uuid, length=10),
                metadata=(("x-request-id", "trace-console"),),
            )
    done = [e for e in events if e["event"] == "command done" and e.get("kind") == "ConsoleAction"]
    assert [e.get("request_id") for e in done] == ["trace-console"]
