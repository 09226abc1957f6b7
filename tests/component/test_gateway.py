"""The REST gateway against a real control plane (fake node): shapes, status codes, bad input."""

from __future__ import annotations

import hashlib
import io
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import pytest
from aiohttp import web

from controlplane.app import ControlPlane
from controlplane.signingkeys import public_path
from gateway.app import serve
from gateway.capabilities import CLIENT_TOKENS, advertised
from gateway.routes import instances as gateway_instances
from gateway.settings import GatewaySettings
from protos import auth_pb2, auth_pb2_grpc
from tests.component.conftest import SYSTEM_KEY, FakeNode

JsonDict = dict[str, Any]


class Rest:
    """A small HTTP client of the gateway (JSON bodies on every verb, as the SF client)."""

    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url
        self.token = "none"

    async def login(self, namespace: str = "system", key: str = SYSTEM_KEY) -> None:
        """Trade the key for a token used by later calls."""
        status, answer = await self.call("POST", "/auth", {"namespace": namespace, "key": key})
        assert status == 200, answer
        self.token = answer["access_token"]

    async def call(
        self, method: str, path: str, body: Any = None, raw: bytes | None = None, **kw: Any
    ) -> tuple[int, Any]:
        # Raw bodies go as a stream: aiohttp warns that a large bytes body blocks its loop.
        data: Any = io.BytesIO(raw) if raw is not None else None
        if body is not None:
            data = json.dumps(body)
        headers = {"Authorization": f"Bearer {self.token}"}
        if body is not None:
            headers["Content-Type"] = "application/json"
        async with self.session.request(
            method, self.url + path, data=data, headers=headers, **kw
        ) as r:
            text = await r.read()
            try:
                return r.status, json.loads(text)
            except ValueError:
                return r.status, text


def token_keys(plane: ControlPlane) -> tuple[Path, ...]:
    """The public key file of the plane's token signing key, for a gateway in front of it."""
    return (public_path(plane.parts.settings.signing_key_path()),)


async def start_gateway(target: str, keys: tuple[Path, ...] = ()) -> tuple[web.AppRunner, str]:
    settings = GatewaySettings(
        listen="127.0.0.1:0",
        api=target,
        max_chunk_bytes=1 << 20,
        metrics_listen="127.0.0.1:0",
        token_public_keys=keys,
    )
    runner = await serve(settings)
    host, port = runner.addresses[0][:2]
    return runner, f"http://{host}:{port}"


@pytest.fixture
async def rest(plane: ControlPlane) -> AsyncIterator[Rest]:
    """A gateway in front of the plane (holding its token key), and a client of it."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}", token_keys(plane))
    async with aiohttp.ClientSession() as session:
        rest = Rest(session, url)
        await rest.login()
        yield rest
    await runner.cleanup()


def create_body(name: Any = "vm1", **overrides: Any) -> JsonDict:
    """What shakenfist-client's create_instance sends."""
    body: JsonDict = {
        "name": name,
        "cpus": 1,
        "memory": 256,
        "network": None,
        "disk": [{"size": 2, "base": "debian:11", "bus": None, "type": "disk"}],
        "ssh_key": None,
        "user_data": None,
        "namespace": None,
        "video": None,
        "configdrive": None,
        "metadata": None,
        "side_channels": None,
        "uefi": False,
        "secure_boot": False,
        "nvram_template": None,
    }
    body.update(overrides)
    return body


async def created(rest: Rest, uuid: str) -> JsonDict:
    for _ in range(200):
        status, inst = await rest.call("GET", f"/instances/{uuid}")
        assert status == 200
        if inst["state"] == "created":
            return inst  # type: ignore[no-any-return]
        await __import__("asyncio").sleep(0.05)
    raise AssertionError("instance never created")


async def test_root_advertises_exactly_what_is_served(rest: Rest) -> None:
    """GET / is public and holds each implemented token, and no other client token."""
    async with rest.session.get(rest.url) as r:
        assert r.status == 200
        page = await r.text()
    for token in CLIENT_TOKENS:
        assert (token in page) == (token in advertised()), token


async def test_openapi_lists_every_route(rest: Rest) -> None:
    """/openapi.json is an OpenAPI 3 document generated from the route table."""
    status, doc = await rest.call("GET", "/openapi.json")
    assert status == 200
    assert doc["openapi"].startswith("3.")
    assert "post" in doc["paths"]["/instances"]
    assert "get" in doc["paths"]["/blobs/{uuid}/data"]
    assert doc["paths"]["/instances"]["post"]["requestBody"]["content"]["application/json"]


async def test_instance_lifecycle_in_shaken_fist_shapes(rest: Rest, node: FakeNode) -> None:
    """Create, get by UUID and name, list, power actions, events, delete: SF shapes and codes."""
    status, inst = await rest.call("POST", "/instances", create_body())
    assert status == 200, inst
    for key in (
        "uuid",
        "name",
        "namespace",
        "cpus",
        "memory",
        "node",
        "state",
        "disk_spec",
        "video",
        "ssh_key",
        "user_data",
        "power_state",
        "agent_state",
        "interfaces",
    ):
        assert key in inst, key
    assert inst["side_channels"] == ["sf-agent", "sf-agent2"]
    assert inst["disk_spec"][0] == {"base": "debian:11", "size": 2, "bus": "virtio", "type": "disk"}
    inst = await created(rest, inst["uuid"])
    status, by_name = await rest.call("GET", "/instances/vm1")
    assert status == 200 and by_name["uuid"] == inst["uuid"]
    status, listed = await rest.call("GET", "/instances", {"all": False})
    assert [i["uuid"] for i in listed] == [inst["uuid"]]

    for action in ("poweroff", "poweron", "pause", "unpause", "rebootsoft", "reboothard"):
        status, body = await rest.call("POST", f"/instances/{inst['uuid']}/{action}")
        assert (status, body) == (200, None), (action, body)
    status, body = await rest.call("POST", f"/instances/{inst['uuid']}/poweroff")
    status, body = await rest.call("POST", f"/instances/{inst['uuid']}/unpause")
    assert status == 409 and body["status"] == 409, body

    status, events = await rest.call(
        "GET", f"/instances/{inst['uuid']}/events", {"event_type": "audit", "limit": "2"}
    )
    assert status == 200 and len(events) == 2
    assert {"type", "timestamp", "fqdn", "duration", "message", "extra"} <= set(events[0])
    assert all(e["type"] == "audit" for e in events)
    status, ifaces = await rest.call("GET", f"/instances/{inst['uuid']}/interfaces")
    assert (status, ifaces) == (200, [])

    status, gone = await rest.call("DELETE", f"/instances/{inst['uuid']}")
    assert status == 200 and gone["uuid"] == inst["uuid"]
    for _ in range(200):
        status, after = await rest.call("GET", f"/instances/{inst['uuid']}")
        if after["state"] == "deleted":
            break
        await __import__("asyncio").sleep(0.05)
    assert status == 200 and after["state"] == "deleted"
    status, _ = await rest.call("DELETE", f"/instances/{inst['uuid']}")
    assert status == 404
    status, listed = await rest.call("GET", "/instances", {"all": True})
    assert [i["state"] for i in listed] == ["deleted"]


async def test_create_with_no_room_is_507(rest: Rest) -> None:
    """With no node to place it on, create answers 507 (insufficient resources) and says why."""
    status, inst = await rest.call("POST", "/instances", create_body("lonely"))
    assert status == 507 and inst["error"], inst


async def test_delete_all_needs_confirm_and_system_names_the_namespace(
    rest: Rest, node: FakeNode
) -> None:
    """DELETE /instances needs confirm; system must name the namespace, whose instances go."""
    for name in ("a1", "a2"):
        status, _ = await rest.call("POST", "/instances", create_body(name))
        assert status == 200
    status, body = await rest.call("DELETE", "/instances", {"confirm": False, "namespace": None})
    assert status == 400 and "confirm" in body["error"]
    status, body = await rest.call("DELETE", "/instances", {"confirm": True, "namespace": None})
    assert status == 400 and "namespace" in body["error"]
    status, uuids = await rest.call(
        "DELETE", "/instances", {"confirm": True, "namespace": "system"}
    )
    assert status == 200 and len(uuids) == 2


async def test_the_unpaged_instance_list_is_read_in_pages(
    rest: Rest, node: FakeNode, monkeypatch: pytest.MonkeyPatch
) -> None:
    """GET /instances answers every instance, oldest first, read from List pages (here of 2)."""
    monkeypatch.setattr(gateway_instances, "PAGE_SIZE", 2)
    names = [f"pg{i}" for i in range(5)]
    for name in names:
        status, _ = await rest.call("POST", "/instances", create_body(name))
        assert status == 200
    status, listed = await rest.call("GET", "/instances", {})
    assert status == 200 and [i["name"] for i in listed] == names
    status, uuids = await rest.call(
        "DELETE", "/instances", {"confirm": True, "namespace": "system"}
    )
    assert status == 200 and len(uuids) == 5


async def test_uploads_artifacts_blobs_and_labels(rest: Rest) -> None:
    """Chunked upload with truncate, artifact from it, blob lookups, data ranges, labels."""
    status, upload = await rest.call("POST", "/upload")
    assert status == 200 and {"uuid", "node"} <= set(upload)
    uuid = upload["uuid"]
    assert await rest.call("POST", f"/upload/{uuid}", raw=b"hello ") == (200, 6)
    assert await rest.call("POST", f"/upload/{uuid}", raw=b"junk") == (200, 10)
    assert await rest.call("POST", f"/upload/{uuid}/truncate/6") == (200, None)
    assert await rest.call("POST", f"/upload/{uuid}", raw=b"world") == (200, 11)
    big = bytes(range(256)) * 3600  # 900 KiB in one chunk, read whole across TCP segments
    assert await rest.call("POST", f"/upload/{uuid}", raw=big) == (200, 11 + len(big))
    assert await rest.call("POST", f"/upload/{uuid}/truncate/11") == (200, None)
    status, art = await rest.call(
        "POST",
        "/artifacts/upload/greeting",
        {"upload_uuid": uuid, "source_url": None, "shared": False, "namespace": None},
    )
    assert status == 200, art
    assert art["blobs"]["1"]["size"] == 11 and art["index"] == 1
    blob_uuid = art["blob_uuid"]

    status, blob = await rest.call("GET", f"/blobs/{blob_uuid}")
    assert status == 200 and blob["transcodes"] == {} and blob["instances"] == []
    digest = hashlib.sha512(b"hello world").hexdigest()
    status, found = await rest.call("GET", f"/blob_checksums/sha512/{digest}")
    assert status == 200 and found["uuid"] == blob_uuid
    status, none = await rest.call("GET", f"/blob_checksums/sha512/{'0' * 128}")
    assert (status, none) == (200, None)
    assert await rest.call("GET", f"/blobs/{blob_uuid}/data?offset=6") == (200, b"world")
    assert await rest.call("GET", f"/blobs/{blob_uuid}/data?offset=0&limit=5") == (200, b"hello")
    assert await rest.call("GET", f"/blobs/{blob_uuid}/data?offset=11&limit=5") == (200, b"")

    status, again = await rest.call(
        "POST", "/artifacts/upload/greeting", {"blob_uuid": blob_uuid, "source_url": None}
    )
    assert status == 200 and again["uuid"] == art["uuid"] and again["index"] == 2
    status, label = await rest.call("POST", "/label/golden", {"blob_uuid": blob_uuid})
    assert status == 200 and label["artifact_type"] == "label"
    status, got = await rest.call("GET", "/artifacts/greeting")
    assert status == 200 and got["uuid"] == art["uuid"]
    status, listed = await rest.call("GET", "/artifacts", {"node": None})
    assert status == 200 and len(listed) == 2


async def test_agent_routes_refuse_before_created_and_without_agent(
    rest: Rest, node: FakeNode
) -> None:
    """Agent calls on an instance without the sf-agent side channel are 409 (its state)."""
    status, inst = await rest.call("POST", "/instances", create_body("noagent", side_channels=[]))
    assert status == 200
    await created(rest, inst["uuid"])
    status, body = await rest.call(
        "POST", f"/instances/{inst['uuid']}/agent/execute", {"command_line": "true"}
    )
    assert status == 409 and "sf-agent" in body["error"]
    status, ops = await rest.call(
        "GET", f"/instances/{inst['uuid']}/agentoperations", {"all": True}
    )
    assert (status, ops) == (200, [])


BAD_INPUT = [
    ("POST", "/instances", create_body(cpus="two"), 400, "cpus"),
    ("POST", "/instances", create_body(memory=[1]), 400, "memory"),
    ("POST", "/instances", create_body(disk="big"), 400, "disk"),
    ("POST", "/instances", create_body(disk=["x"]), 400, "disk 0"),
    ("POST", "/instances", create_body(disk=[{"size": "huge"}]), 400, "size"),
    ("POST", "/instances", create_body(video={"model": "vga"}), 400, "video"),
    ("POST", "/instances", create_body(colour="red"), 400, "colour"),
    ("POST", "/instances", create_body(name=""), 400, "name"),
    ("POST", "/instances", create_body(7), 400, "name"),
    ("POST", "/instances", {"cpus": 1}, 400, "missing"),
    ("POST", "/instances", [1, 2], 400, "object"),
    ("POST", "/instances", create_body(disk=[{"size": 1, "bus": "ide"}]), 400, "ide"),
    ("GET", "/instances", {"all": "yes"}, 400, "all"),
    ("GET", "/instances", {"bogus": 1}, 400, "bogus"),
    ("GET", "/instances/nope", None, 404, "not found"),
    ("GET", "/instances/nope/events", {"limit": "many"}, 400, "limit"),
    ("GET", "/instances/nope/events", {"limit": 0}, 400, "limit"),
    ("GET", "/agentoperations/not-a-uuid", None, 400, "UUID"),
    ("GET", f"/agentoperations/{'1' * 8}-1111-1111-1111-{'1' * 12}", None, 404, "not found"),
    ("DELETE", "/agentoperations/zzz", None, 400, "UUID"),
    ("GET", "/blobs/../../etc/passwd", None, 404, ""),
    ("GET", "/blobs/xyz", None, 400, "UUID"),
    ("GET", f"/blobs/{'2' * 8}-2222-2222-2222-{'2' * 12}/data?offset=-1", None, 400, "offset"),
    ("GET", f"/blobs/{'2' * 8}-2222-2222-2222-{'2' * 12}/data?offset=a", None, 400, "offset"),
    ("GET", "/blob_checksums/sha512/abc", None, 400, "sha512"),
    ("POST", "/upload/abc", None, 400, "UUID"),
    ("POST", f"/upload/{'3' * 8}-3333-3333-3333-{'3' * 12}/truncate/x", None, 400, "offset"),
    ("POST", "/artifacts/upload/x", {"source_url": None}, 400, "exactly one"),
    ("POST", "/artifacts/upload/x", {"blob_uuid": "a", "upload_uuid": "b"}, 400, "exactly one"),
    ("POST", "/label/x", {}, 400, "blob_uuid"),
    ("POST", "/instances/x/poweron", None, 404, "not found"),
    ("PATCH", "/instances", None, 405, ""),
    ("GET", "/no/such/route", None, 404, ""),
    ("POST", "/auth", {"key": "k"}, 400, "missing namespace"),
    ("POST", "/auth", {"namespace": None, "key": "k"}, 404, "namespace not found"),
    ("POST", "/auth", {"namespace": "system"}, 400, "missing key"),
    ("POST", "/auth", {"namespace": "system", "key": 5}, 400, "key is not a string"),
    ("POST", "/auth", {"namespace": "system", "key": "k", "x": 1}, 400, "x"),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "words"), BAD_INPUT)
async def test_bad_input_is_a_4xx_with_a_message(
    rest: Rest, method: str, path: str, body: Any, status: int, words: str
) -> None:
    """Bad input gets the expected 4xx and a JSON error that says why, never a 500."""
    got, answer = await rest.call(method, path, body)
    assert got == status, answer
    assert answer["status"] == status
    assert words.lower() in answer["error"].lower()


async def test_malformed_and_huge_bodies_are_refused(rest: Rest) -> None:
    """Invalid JSON is a 400; a body over the limits is a 413; neither is a 500."""
    got, answer = await rest.call("POST", "/instances", raw=b"{not json")
    assert got == 400 and "JSON" in answer["error"]
    got, answer = await rest.call("POST", "/instances", raw=b"[" * (2 * 1024 * 1024))
    assert got == 413 and answer["status"] == 413
    _, upload = await rest.call("POST", "/upload")
    got, answer = await rest.call("POST", f"/upload/{upload['uuid']}", raw=b"x" * ((1 << 20) + 1))
    assert got == 413 and "at most" in answer["error"], answer


async def test_responses_carry_a_request_id(rest: Rest) -> None:
    """Every response has an X-Request-ID (the caller's when it sent one)."""
    async with rest.session.get(rest.url + "/instances", headers={"X-Request-ID": "abc"}) as r:
        assert r.headers["X-Request-ID"] == "abc"
    async with rest.session.get(rest.url + "/nothing") as r:
        assert r.headers["X-Request-ID"]


class FakeTokens(auth_pb2_grpc.AuthServiceServicer):
    """A token server knowing one namespace "ns1" with key "good"."""

    async def Token(self, request: auth_pb2.TokenRequest, context: Any) -> auth_pb2.TokenResponse:
        if request.namespace != "ns1":
            await context.abort(grpc.StatusCode.NOT_FOUND, "namespace not found")
        if request.key != "good":
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "wrong key")
        return auth_pb2.TokenResponse(access_token="tok", token_type="Bearer", expires_in=900)


async def test_auth_maps_token_service_answers() -> None:
    """POST /auth: 200 with a token, 404 for an unknown namespace, 401 for a wrong key."""
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(FakeTokens(), server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    runner, url = await start_gateway(f"127.0.0.1:{port}")
    try:
        async with aiohttp.ClientSession() as session:
            rest = Rest(session, url)
            ok = await rest.call("POST", "/auth", {"namespace": "ns1", "key": "good"})
            assert ok == (200, {"access_token": "tok", "token_type": "Bearer", "expires_in": 900})
            status, body = await rest.call("POST", "/auth", {"namespace": "ns2", "key": "good"})
            assert (status, body["error"]) == (404, "namespace not found")
            status, body = await rest.call("POST", "/auth", {"namespace": "ns1", "key": "bad"})
            assert (status, body["error"]) == (401, "unauthorized")
            status, body = await rest.call("GET", "/instances")
            assert status == 501
    finally:
        await runner.cleanup()
        await server.stop(0)


async def test_metadata_on_instances_blobs_and_artifacts(rest: Rest, node: FakeNode) -> None:
    """PUT, GET and DELETE /<plural>/<ref>/metadata[/<key>], with null answers and 400s."""
    status, inst = await rest.call("POST", "/instances", create_body("meta", metadata={"a": 1}))
    assert status == 200 and inst["metadata"] == {"a": 1}
    base = f"/instances/{inst['uuid']}/metadata"
    assert await rest.call("PUT", f"{base}/foo", {"value": "bar"}) == (200, None)
    assert await rest.call("GET", base) == (200, {"a": 1, "foo": "bar"})
    assert await rest.call("GET", "/instances/meta/metadata") == (200, {"a": 1, "foo": "bar"})
    assert await rest.call("DELETE", f"{base}/foo") == (200, None)
    assert await rest.call("DELETE", f"{base}/foo") == (200, None)
    status, answer = await rest.call("PUT", f"{base}/tags", {"value": "notalist"})
    assert status == 400 and "tags" in answer["error"]
    status, answer = await rest.call("PUT", f"{base}/foo", {"value": ""})
    assert status == 400 and "no value" in answer["error"]

    _, upload = await rest.call("POST", "/upload")
    await rest.call("POST", f"/upload/{upload['uuid']}", raw=b"meta bytes")
    _, art = await rest.call("POST", "/artifacts/upload/metaart", {"upload_uuid": upload["uuid"]})
    for base in (f"/blobs/{art['blob_uuid']}/metadata", "/artifacts/metaart/metadata"):
        assert await rest.call("PUT", f"{base}/k", {"value": [1, 2]}) == (200, None)
        assert await rest.call("GET", base) == (200, {"k": [1, 2]})
    status, _ = await rest.call("GET", f"/instances/{'4' * 8}-4444-4444-4444-{'4' * 12}/metadata")
    assert status == 404


async def test_a_second_gateway_on_a_taken_address_is_refused(plane: ControlPlane) -> None:
    """Two gateways never share one address: the second fails to start, naming the address."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    taken = url.removeprefix("http://")
    try:
        with pytest.raises(OSError, match=f"cannot listen on {taken}"):
            await serve(
                GatewaySettings(listen=taken, api=f"127.0.0.1:{plane.port}", metrics_listen="")
            )
    finally:
        await runner.cleanup()


async def test_sf_agent2_is_accepted_as_the_agent_channel(rest: Rest, node: FakeNode) -> None:
    """A create asking for sf-agent2 gets the agent channel, listed under both names."""
    status, inst = await rest.call(
        "POST", "/instances", create_body("agent2", side_channels=["sf-agent2"])
    )
    assert status == 200
    assert inst["side_channels"] == ["sf-agent", "sf-agent2"]
    assert inst["agent_state"] == "not ready (no contact)"


async def test_repeated_bad_keys_over_rest_are_slowed_with_a_message(
    rest: Rest, node: FakeNode
) -> None:
    """After the free failures, /auth is 401 'too many failed logins', even for the right key."""
    status, _ = await rest.call(
        "POST", "/auth/namespaces", {"namespace": "slow", "key_name": "k", "key": "right"}
    )
    assert status == 200
    for _ in range(4):
        status, body = await rest.call("POST", "/auth", {"namespace": "slow", "key": "wrong"})
        assert status == 401
    status, body = await rest.call("POST", "/auth", {"namespace": "slow", "key": "right"})
    assert status == 401 and body["error"].startswith("too many failed logins"), body


async def test_display_password_is_only_in_the_vdi_console_helper(
    rest: Rest, node: FakeNode
) -> None:
    """The .vv file from vdiconsolehelper has the display password; instance JSON never does."""
    status, inst = await rest.call(
        "POST", "/instances", create_body(video={"model": "cirrus", "memory": 16384, "vdi": "vnc"})
    )
    assert status == 200, inst
    inst = await created(rest, inst["uuid"])
    status, vv = await rest.call("GET", f"/instances/{inst['uuid']}/vdiconsolehelper")
    password = node.hypervisor.domains[inst["uuid"]].ports.vdi_password
    assert status == 200 and f"password={password}".encode() in vv.splitlines()
    for path in (f"/instances/{inst['uuid']}", "/instances/vm1", "/instances"):
        status, body = await rest.call("GET", path)
        assert status == 200 and password not in json.dumps(body), path
