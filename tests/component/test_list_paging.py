"""Paged listing over real gRPC: List's pages and tokens, and ListStream.

Pages are in UUID order and resume just past the last record the previous
page looked at, so every instance is listed once whatever is created or
deleted between pages; a page holds only what the caller may see.
"""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator

import grpc
import pytest

from controlplane.app import ControlPlane
from controlplane.paging import MAX_PAGE_SIZE, encode_token
from protos import instances_pb2
from tests.component.conftest import (
    Api,
    FakeNode,
    create_request,
    make_api,
    namespace_api,
    start_fake_node,
)

Request = instances_pb2.ListInstancesRequest


@pytest.fixture
async def big_node(plane: ControlPlane) -> AsyncIterator[FakeNode]:
    """A fake node with room for every instance these tests make."""
    fake = await start_fake_node(f"127.0.0.1:{plane.port}", cpus=256, memory_mb=262144)
    yield fake
    await fake.close()


@pytest.fixture
async def channel(plane: ControlPlane) -> AsyncIterator[grpc.aio.Channel]:
    """A channel to the plane."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as chan:
        yield chan


async def make(api: Api, count: int, prefix: str) -> list[str]:
    """Create count instances; their UUIDs."""
    return [(await api.Create(create_request(f"{prefix}{i}"))).uuid for i in range(count)]


async def pages(api: Api, size: int, include_deleted: bool = False) -> list[list[str]]:
    """Every page of List at this size, as UUID lists."""
    found: list[list[str]] = []
    token = ""
    while True:
        reply = await api.List(
            Request(page_size=size, page_token=token, include_deleted=include_deleted)
        )
        found.append([i.uuid for i in reply.instances])
        token = reply.next_page_token
        if not token:
            return found


async def streamed(api: Api, size: int, token: str = "") -> list[list[str]]:
    """Every page ListStream sends at this size, as UUID lists."""
    return [
        [i.uuid for i in page.instances]
        async for page in api.ListStream(Request(page_size=size, page_token=token))
    ]


async def test_every_page_size_lists_each_instance_once_in_uuid_order(
    channel: grpc.aio.Channel, big_node: FakeNode
) -> None:
    """At any page size the pages hold each instance once, in UUID order, all full but the last."""
    api = await make_api(channel)
    uuids = await make(api, 11, "p")
    for size in (1, 2, 5, 11, 12, MAX_PAGE_SIZE):
        got = await pages(api, size)
        flat = [u for page in got for u in page]
        assert flat == sorted(uuids), size
        assert all(len(page) == size for page in got[:-1]), size
        assert 0 < len(got[-1]) <= size


async def test_a_list_without_page_fields_is_everything_oldest_first(
    channel: grpc.aio.Channel, big_node: FakeNode
) -> None:
    """Old callers (no page_size, no page_token) get every instance in one answer, as before."""
    api = await make_api(channel)
    uuids = await make(api, 6, "old")
    reply = await api.List(Request())
    assert [i.uuid for i in reply.instances] == uuids
    assert reply.next_page_token == ""


async def test_page_size_zero_with_a_token_is_the_default_page(
    channel: grpc.aio.Channel, big_node: FakeNode
) -> None:
    """A token without a page size continues with the default page size."""
    api = await make_api(channel)
    uuids = sorted(await make(api, 4, "d"))
    first = await api.List(Request(page_size=1))
    rest = await api.List(Request(page_token=first.next_page_token))
    assert [i.uuid for i in rest.instances] == uuids[1:] and rest.next_page_token == ""


@pytest.mark.parametrize("size", [-1, MAX_PAGE_SIZE + 1, 2**31 - 1])
async def test_a_bad_page_size_is_invalid_argument(
    plane: ControlPlane, api: Api, size: int
) -> None:
    """A page size below 0 or above the maximum is refused, by List and by ListStream."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.List(Request(page_size=size))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await streamed(api, size)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


GARBAGE = [
    "!!!",
    "abc",
    "é",
    "a" * 10_000,
    base64.urlsafe_b64encode(b"i1:not-a-uuid").decode(),
    base64.urlsafe_b64encode(b"\xff\xfe\x00").decode(),
    base64.urlsafe_b64encode(b"i1:../../node/x").decode(),
    encode_token("0B7F3E56-7AE9-4E0E-9F2A-1D4C7E8B9A10"),  # upper case: not ours
    encode_token("0b7f3e56-7ae9-4e0e-9f2a-1d4c7e8b9a10") + "!",
]


@pytest.mark.parametrize("token", GARBAGE)
async def test_a_forged_token_is_invalid_argument(
    plane: ControlPlane, api: Api, token: str
) -> None:
    """A page token the API did not hand out is INVALID_ARGUMENT, never INTERNAL."""
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await api.List(Request(page_size=2, page_token=token))
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await streamed(api, 2, token)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_a_well_formed_token_of_no_instance_resumes_past_that_uuid(
    channel: grpc.aio.Channel, big_node: FakeNode
) -> None:
    """A token naming a UUID that never existed is no error: the list goes on past it."""
    api = await make_api(channel)
    uuids = sorted(await make(api, 5, "g"))
    middle = uuids[2][:-1] + ("0" if uuids[2][-1] != "0" else "1")
    reply = await api.List(Request(page_size=10, page_token=encode_token(middle)))
    assert [i.uuid for i in reply.instances] == [u for u in uuids if u > middle]


async def test_creates_and_deletes_between_pages_list_nothing_twice(
    channel: grpc.aio.Channel, big_node: FakeNode
) -> None:
    """Instances made or deleted between pages never make one appear twice or one left out."""
    api = await make_api(channel)
    before = await make(api, 9, "c")
    first = await api.List(Request(page_size=3))
    seen = [i.uuid for i in first.instances]
    deleted = [u for u in before if u not in seen][:2] + seen[:1]
    for uuid in deleted:
        await api.Delete(instances_pb2.InstanceRef(ref=uuid))
    for uuid in deleted:
        await api.wait_for(uuid, lambda i: i.state == "deleted")
    added = await make(api, 6, "n")
    token = first.next_page_token
    while token:
        reply = await api.List(Request(page_size=3, page_token=token))
        seen += [i.uuid for i in reply.instances]
        token = reply.next_page_token
    assert len(seen) == len(set(seen))
    kept = set(before) - set(deleted)
    assert kept <= set(seen)
    assert not set(deleted) & set(seen[3:])  # deleted before their page: not on it
    past = [u for u in added if u > first.instances[-1].uuid]
    assert set(past) <= set(seen)  # created past the cursor: listed; before it: not yet


async def test_a_page_never_shows_another_namespaces_instances(
    channel: grpc.aio.Channel, big_node: FakeNode
) -> None:
    """Interleaved namespaces: each one's pages hold only its own; system's hold all."""
    alpha = await namespace_api(channel, "alpha")
    beta = await namespace_api(channel, "beta")
    mine: dict[str, list[str]] = {"alpha": [], "beta": []}
    for i in range(6):
        mine["alpha"] += await make(alpha, 1, f"a{i}-")
        mine["beta"] += await make(beta, 2, f"b{i}-")
    for name, api in (("alpha", alpha), ("beta", beta)):
        for size in (1, 2, 4):
            got = await pages(api, size)
            assert [u for page in got for u in page] == sorted(mine[name]), (name, size)
            assert all(len(page) == size for page in got[:-1])
        assert [u for page in await streamed(api, 3) for u in page] == sorted(mine[name])
    system = await make_api(channel)
    every = sorted(mine["alpha"] + mine["beta"])
    assert [u for page in await pages(system, 5) for u in page] == every


async def test_another_namespaces_token_reveals_nothing(
    channel: grpc.aio.Channel, big_node: FakeNode
) -> None:
    """A token built from another namespace's UUID only says where to resume: still one's own."""
    owner = await namespace_api(channel, "owner")
    stranger = await namespace_api(channel, "stranger")
    theirs = await make(owner, 4, "o")
    own = await make(stranger, 2, "s")
    for uuid in theirs:
        reply = await stranger.List(Request(page_size=10, page_token=encode_token(uuid)))
        assert {i.uuid for i in reply.instances} <= set(own)
        assert all(i.namespace == "stranger" for i in reply.instances)


async def test_deleted_instances_are_paged_only_when_asked_for(
    channel: grpc.aio.Channel, big_node: FakeNode
) -> None:
    """include_deleted pages deleted instances too; without it they are skipped, pages stay full."""
    api = await make_api(channel)
    uuids = await make(api, 6, "x")
    for uuid in uuids[::2]:
        await api.Delete(instances_pb2.InstanceRef(ref=uuid))
        await api.wait_for(uuid, lambda i: i.state == "deleted")
    live = await pages(api, 2)
    assert [u for page in live for u in page] == sorted(uuids[1::2])
    assert [len(page) for page in live] == [2, 1]
    every = await pages(api, 2, include_deleted=True)
    assert [u for page in every for u in page] == sorted(uuids)


async def test_the_stream_sends_the_same_pages_and_resumes_from_a_token(
    channel: grpc.aio.Channel, big_node: FakeNode
) -> None:
    """ListStream sends List's pages in order, each with the token to resume after it."""
    api = await make_api(channel)
    uuids = sorted(await make(api, 7, "s"))
    assert await streamed(api, 3) == await pages(api, 3)
    assert await streamed(api, 0) == [uuids]  # 0: the default page size
    replies = [page async for page in api.ListStream(Request(page_size=3))]
    assert [bool(p.next_page_token) for p in replies] == [True, True, False]
    assert await streamed(api, 3, replies[0].next_page_token) == [uuids[3:6], uuids[6:]]


async def test_an_empty_namespace_lists_one_empty_page(plane: ControlPlane, api: Api) -> None:
    """With nothing to list, List and ListStream answer one empty last page."""
    reply = await api.List(Request(page_size=5))
    assert list(reply.instances) == [] and reply.next_page_token == ""
    assert await streamed(api, 5) == [[]]
