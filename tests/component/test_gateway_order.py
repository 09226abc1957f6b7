"""The gateway's order of answers, and hostile input: always a 4xx with a message, never a 500."""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from controlplane.app import ControlPlane
from gateway.capabilities import advertised
from gateway.unimplemented import UNSERVED, tokens
from tests.component.test_gateway import Rest, start_gateway

UUID = "6f1c1f5e-0d4e-4d8a-9a57-0c5e0c0b7f11"
# A token in the right shape, signed with the wrong secret.
FORGED = "eyJucyI6InN5c3RlbSJ9.c2lnbmF0dXJl"


@pytest.fixture
async def gw(plane: ControlPlane) -> AsyncIterator[tuple[Rest, str]]:
    """A gateway in front of the plane, a logged-in client, and the gateway's host:port."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    async with aiohttp.ClientSession() as session:
        rest = Rest(session, url)
        await rest.login()
        yield rest, url.removeprefix("http://")
    await runner.cleanup()


# (token: "none" | "bad" | "forged" | "good", method, path, body, status, words, Allow header)
ORDER: list[tuple[str, str, str, Any, int, str, str | None]] = [
    ("none", "GET", "/instances", None, 401, "Bearer", None),
    ("none", "POST", "/instances", {"name": 7}, 401, "Bearer", None),
    ("none", "GET", "/no/such/path", None, 401, "Bearer", None),
    ("none", "PATCH", "/instances", None, 401, "Bearer", None),
    ("none", "GET", "/nodes", None, 401, "Bearer", None),
    ("none", "GET", "/agentoperations/not-a-uuid", None, 401, "Bearer", None),
    ("bad", "GET", "/instances", None, 401, "token", None),
    ("bad", "POST", "/instances", [1], 401, "token", None),
    ("forged", "GET", "/no/such/path", None, 401, "token", None),
    ("forged", "POST", "/instances", {"cpus": "x"}, 401, "token", None),
    ("forged", "DELETE", "/nodes/n1", None, 401, "token", None),
    ("good", "GET", "/no/such/path", None, 404, "no such path", None),
    ("good", "GET", "/instances/", None, 404, "no such path", None),
    ("good", "GET", "/nodes/n1/processmetrics", None, 404, "is not implemented", None),
    ("good", "GET", "/nodes/n1", None, 404, "n1", None),
    ("good", "GET", "/label/golden", None, 404, "is not implemented", None),
    ("good", "POST", f"/networks/{UUID}/dns", None, 404, "is not implemented", None),
    ("good", "POST", f"/networks/{UUID}/route", {"x": 1}, 404, "is not implemented", None),
    ("good", "GET", "/blob_checksums/md5/abc", None, 404, "is not implemented", None),
    ("good", "PATCH", "/instances", None, 405, "not allowed", "DELETE, GET, POST"),
    ("good", "PUT", f"/agentoperations/{UUID}", None, 405, "not allowed", "DELETE, GET"),
    ("good", "PATCH", "/nodes", None, 405, "not allowed", "GET"),
    ("good", "PUT", "/nodes/n1", None, 405, "not allowed", "DELETE, GET"),
    ("good", "POST", "/nodes/n1/processmetrics", None, 405, "not allowed", ""),
    ("good", "GET", "/nodes/n1/events", {"limit": "x"}, 400, "limit", None),
    ("good", "GET", "/nodes", None, 200, "", None),
    ("good", "POST", "/instances", {"name": 7}, 400, "name", None),
    ("good", "GET", "/instances", {"bogus": 1}, 400, "bogus", None),
    ("none", "GET", "/", None, 200, "", None),
    ("none", "GET", "/healthz", None, 200, "", None),
    ("none", "POST", "/", None, 405, "not allowed", "GET"),
    ("none", "POST", "/auth", {"namespace": "system"}, 400, "missing key", None),
]


@pytest.mark.parametrize(("token", "method", "path", "body", "status", "words", "allow"), ORDER)
async def test_answers_come_in_order(
    gw: tuple[Rest, str],
    token: str,
    method: str,
    path: str,
    body: Any,
    status: int,
    words: str,
    allow: str | None,
) -> None:
    """Token first (401), then path (404), not-implemented (404), method (405), body (400)."""
    rest, _ = gw
    rest.token = {"none": "", "bad": "nonsense!", "forged": FORGED}.get(token, rest.token)
    headers = {"Authorization": f"Bearer {rest.token}"} if token != "none" else {}
    data = json.dumps(body) if body is not None else None
    async with rest.session.request(method, rest.url + path, data=data, headers=headers) as r:
        got, text = r.status, await r.text()
        assert got == status, text
        if status != 200:
            assert words.lower() in json.loads(text)["error"].lower(), text
        assert r.headers.get("Allow") == allow


async def test_a_valid_token_is_checked_once_then_remembered(gw: tuple[Rest, str]) -> None:
    """After a key is deleted its tokens are refused (by the call, even while remembered)."""
    rest, _ = gw
    status, _ = await rest.call("POST", "/auth/namespaces", {"namespace": "ns1"})
    assert status == 200
    body = {"key_name": "k1", "key": "secret-1"}
    assert (await rest.call("POST", "/auth/namespaces/ns1/keys", body))[0] == 200
    system_token = rest.token
    await rest.login("ns1", "secret-1")
    assert (await rest.call("GET", "/instances"))[0] == 200
    ns1_token, rest.token = rest.token, system_token
    assert (await rest.call("DELETE", "/auth/namespaces/ns1/keys/k1"))[0] == 200
    rest.token = ns1_token
    assert (await rest.call("GET", "/instances"))[0] == 401
    assert (await rest.call("GET", "/no/such/path"))[0] in (401, 404)


def concrete(path: str) -> str:
    """A path matching the route template path (each parameter filled in)."""
    return re.sub(r"\{\w+(:[^}]*)?\}", "x1", path)


async def test_every_route_without_a_token_is_401(gw: tuple[Rest, str]) -> None:
    """Every served and not-implemented route, and a method none serves, with a broken body."""
    from gateway.app import all_routes

    rest, _ = gw
    routes = [(r.method, r.path) for r in all_routes() if not r.public]
    routes += [(u.method, u.path) for u in UNSERVED] + [("PATCH", "/nodes/x1")]
    assert any(path.startswith("/nodes") for _, path in routes)
    wrong = []
    for method, path in routes:
        url = rest.url + concrete(path)
        async with rest.session.request(method, url, data=b'{"name": [') as r:
            if r.status != 401:
                wrong.append((method, path, r.status, await r.text()))
    assert wrong == []


async def test_every_path_answers_a_method_it_lacks_with_404_or_405(gw: tuple[Rest, str]) -> None:
    """With a token: a Shaken Fist method not served is 404 "not implemented", any other 405."""
    from gateway.app import all_routes

    rest, _ = gw
    # Methods served on each concrete path (templates naming their parameters differently
    # may be one path), and the not-implemented ones.
    served: dict[str, set[str]] = {}
    for route in all_routes():
        served.setdefault(concrete(route.path), set()).add(route.method)
    for row in UNSERVED:
        served.setdefault(concrete(row.path), set())
    unserved = {(u.method, concrete(u.path)) for u in UNSERVED}
    wrong = []
    for path, methods in served.items():
        for method in ("GET", "POST", "PUT", "PATCH", "DELETE"):
            if method in methods:
                continue
            async with rest.session.request(
                method, rest.url + path, headers={"Authorization": f"Bearer {rest.token}"}
            ) as r:
                text = await r.text()
                if (method, path) in unserved:
                    ok = r.status == 404 and "is not implemented" in text
                else:
                    allow = r.headers.get("Allow", "")
                    ok = r.status == 405 and set(filter(None, allow.split(", "))) >= methods
                if not ok:
                    wrong.append((method, path, r.status, r.headers.get("Allow"), text[:100]))
    assert wrong == []


def test_unimplemented_routes_are_neither_served_nor_advertised() -> None:
    """No route of the not-implemented table is served, and no token needing one is on GET /."""
    from gateway.app import all_routes

    served = {(r.method, r.path) for r in all_routes()}
    assert not served & {(u.method, u.path) for u in UNSERVED}
    assert not tokens() & set(advertised())


async def raw(hostport: str, request: bytes) -> tuple[int, dict[str, Any] | str, bytes]:
    """Send bytes as an HTTP request; the status, the JSON (or text) body, the raw head."""
    host, port = hostport.rsplit(":", 1)
    reader, writer = await asyncio.open_connection(host, int(port))
    writer.write(request)
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    head, _, body = data.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body), head
    except ValueError:
        return status, body.decode("latin-1"), head


def http(method: str, path: bytes, headers: dict[bytes, bytes], body: bytes = b"") -> bytes:
    lines = [method.encode() + b" " + path + b" HTTP/1.1", b"Host: x", b"Connection: close"]
    lines += [k + b": " + v for k, v in headers.items()]
    lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def hostile(token: str) -> list[tuple[str, bytes, dict[bytes, bytes], bytes, tuple[int, ...]]]:
    """(what, path, headers, body, acceptable statuses) for each hostile request."""
    auth = {b"Authorization": b"Bearer " + token.encode()}
    json_h = {**auth, b"Content-Type": b"application/json"}
    create = {"name": "vm", "cpus": 1, "memory": 64, "disk": [{"size": 1}]}
    return [
        # aiohttp's HTTP parser refuses control characters in headers itself (400, text).
        (
            "control char in Authorization",
            b"/instances",
            {b"Authorization": b"Bearer a\x01b"},
            b"",
            (400, 401),
        ),
        (
            "non-ASCII Authorization",
            b"/instances",
            {b"Authorization": b"Bearer caf\xc3\xa9"},
            b"",
            (401,),
        ),
        (
            "latin-1 Authorization",
            b"/instances",
            {b"Authorization": b"Bearer \xe9\xff"},
            b"",
            (401,),
        ),
        (
            "huge Authorization",
            b"/instances",
            {b"Authorization": b"Bearer " + b"a" * 6000},
            b"",
            (401,),
        ),
        ("no scheme", b"/instances", {b"Authorization": token.encode()}, b"", (401,)),
        (
            "odd X-Request-ID",
            b"/instances",
            {**auth, b"X-Request-ID": b"\xc3\xa9;rm -rf /"},
            b"",
            (200,),
        ),
        ("bad UTF-8 path", b"/instances/\xff\xfe", auth, b"", (400, 404)),
        ("percent bad UTF-8 path", b"/instances/%ff%fe", auth, b"", (400, 404)),
        ("encoded surrogate path", b"/instances/%ed%a0%80", auth, b"", (400, 404)),
        ("bad UTF-8 query", f"/blobs/{UUID}/data?offset=%ff".encode(), auth, b"", (400,)),
        ("surrogate namespace", b"/instances/x", json_h, b'{"namespace": "\\ud800"}', (400,)),
        ("non-ASCII namespace", b"/instances/x", json_h, '{"namespace": "café"}'.encode(), (400,)),
        ("newline namespace", b"/instances/x", json_h, b'{"namespace": "a\\nb"}', (400,)),
        (
            "surrogate name",
            b"/instances",
            json_h,
            json.dumps({**create, "name": "\ud800"}).encode(),
            (400,),
        ),
        (
            "surrogate metadata key",
            b"/instances",
            json_h,
            json.dumps({**create, "metadata": {"\udfff": 1}}).encode(),
            (400,),
        ),
        ("deep JSON", b"/instances", json_h, b"[" * 50000 + b"]" * 50000, (400, 413)),
        (
            "deep metadata",
            b"/instances",
            json_h,
            b'{"metadata":' + b'{"a":' * 200 + b"1" + b"}" * 201,
            (400,),
        ),
        ("huge body", b"/instances", json_h, b"x" * (2 << 20), (413,)),
        ("body is a list", b"/instances", json_h, b"[1, 2]", (400,)),
        ("body is a string", b"/instances", json_h, b'"x"', (400,)),
        ("body is a number", b"/instances", json_h, b"1e999", (400,)),
        ("not UTF-8 body", b"/instances", json_h, b'{"name": "\xff"}', (400,)),
        (
            "huge cpus",
            b"/instances",
            json_h,
            json.dumps({**create, "cpus": 10**30}).encode(),
            (400,),
        ),
        (
            "huge disk size",
            b"/instances",
            json_h,
            json.dumps({**create, "disk": [{"size": 10**30}]}).encode(),
            (400,),
        ),
        (
            "float memory",
            b"/instances",
            json_h,
            json.dumps({**create, "memory": 1.5}).encode(),
            (400,),
        ),
        (
            "huge console length",
            b"/instances/x/consoledata",
            json_h,
            json.dumps({"length": 2**70}).encode(),
            (400,),
        ),
        (
            "huge events limit",
            b"/instances/x/events",
            json_h,
            json.dumps({"limit": 2**70}).encode(),
            (400,),
        ),
        (
            "wrong type video",
            b"/instances",
            json_h,
            json.dumps({**create, "video": [1]}).encode(),
            (400,),
        ),
        (
            "wrong type disk item",
            b"/instances",
            json_h,
            json.dumps({**create, "disk": [{"base": 5}]}).encode(),
            (400,),
        ),
        (
            "wrong type netdesc",
            b"/instances",
            json_h,
            json.dumps({**create, "network": [{"network_uuid": []}]}).encode(),
            (400,),
        ),
        (
            "huge mode",
            b"/instances/x/agent/put",
            json_h,
            json.dumps({"blob_uuid": UUID, "path": "/x", "mode": 2**70}).encode(),
            (400, 404, 406),
        ),
        (
            "surrogate metadata value",
            f"/blobs/{UUID}/metadata/k".encode(),
            json_h,
            b'{"value": "\\udc00"}',
            (400,),
        ),
        (
            "huge metadata int",
            f"/blobs/{UUID}/metadata/k".encode(),
            json_h,
            json.dumps({"value": 10**400}).encode(),
            (400, 404),
        ),
        (
            "surrogate auth namespace",
            b"/auth",
            {b"Content-Type": b"application/json"},
            b'{"namespace": "\\ud800", "key": "k"}',
            (400,),
        ),
        (
            "deep auth body",
            b"/auth",
            {b"Content-Type": b"application/json"},
            b"[" * 5000 + b"]" * 5000,
            (400,),
        ),
        ("bad UTF-8 node name", b"/nodes/\xff\xfe", auth, b"", (400, 404)),
        ("surrogate node name", b"/nodes/%ed%a0%80/events", auth, b"", (400, 404)),
        (
            "surrogate node metadata",
            b"/nodes/n1/metadata/k",
            json_h,
            b'{"value": "\\udc00"}',
            (400,),
        ),
        (
            "NUL in key name",
            b"/auth/namespaces/system/keys/a%00b",
            json_h,
            b'{"key": "k"}',
            (400, 404),
        ),
    ]


async def test_hostile_requests_get_a_4xx_with_a_message(gw: tuple[Rest, str]) -> None:
    """Odd headers, undecodable paths and queries, surrogates, deep or huge bodies: all 4xx."""
    rest, hostport = gw
    wrong = []
    for what, path, headers, body, statuses in hostile(rest.token):
        method = "PUT" if b"/metadata/" in path or b"/keys/" in path else "POST"
        if b"/data?" in path or b"/consoledata" in path or b"/events" in path:
            method = "GET"
        if not body or (path.startswith(b"/instances/") and path.count(b"/") == 2):
            method = "GET"
        status, answer, head = await raw(hostport, http(method, path, headers, body))
        if status not in statuses:
            wrong.append((what, status, answer))
        elif isinstance(answer, dict) or status == 200:
            assert status == 200 or answer.get("error"), (what, answer)  # type: ignore[union-attr]
            assert b"X-Request-ID" in head
        else:
            assert status == 400 and "Invalid" in answer, (what, answer)
    assert wrong == []
    # Still serving.
    assert (await rest.call("GET", "/instances"))[0] == 200
