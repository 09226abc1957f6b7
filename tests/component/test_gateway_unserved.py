"""What the gateway does not serve, as shakenfist-client sees it: a clean 404, never a 405.

Every ``apiclient.Client`` method of shakenfist-client 0.8.3 is called once
with a recording transport to learn the request it sends; those whose route
the gateway does not serve are listed in ``UNSERVED_CALLS``. Called for real
against a gateway, each one fails with the client's ResourceNotFoundException
and the body ``{"error": "<METHOD> <path> is not implemented"}`` (sf-client
prints "Resource not found: ..." rather than a traceback); those the client
gates on a capability token are refused by the client itself first, because
``GET /`` does not advertise the token.
"""

from __future__ import annotations

import asyncio
import inspect
import re
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from shakenfist_client import apiclient

from controlplane.app import ControlPlane
from gateway.app import all_routes
from tests.component.conftest import SYSTEM_KEY
from tests.component.test_gateway import start_gateway

UUID = "11111111-2222-3333-4444-555555555555"

# Client method -> the capability token it checks before sending ("" if none).
UNSERVED_CALLS: dict[str, str] = {
    "delete_network_dns_entry": "extra-dns-entries",
    "get_blob_hash": "blob-single-checksum",
    "get_cluster_cacert": "cluster-cacert",
    "get_cluster_operation": "get-cluster-operations",
    "get_cluster_operation_chain": "cluster-operation-chain",
    "get_cluster_resources": "cluster-resources",
    "get_existing_locks": "",
    "get_node_process_metrics": "node-process-metrics",
    "get_vdi_console_proxy": "",
    "get_vdi_console_proxy_file": "",
    "get_vdi_token_public_keys": "",
    "list_cluster_operations_for_target": "cluster-operations-by-target",
    "ping": "",
    "route_network_address": "route-addresses",
    "unroute_network_address": "route-addresses",
    "update_network_dns_entry": "extra-dns-entries",
}
# Methods that fail before sending anything with placeholder arguments (a file object).
UNRECORDED = {"send_upload_file"}


class Sent(Exception):
    """Raised by the recording transport once a request is recorded."""


def placeholders(method: Any) -> list[str]:
    """Positional arguments for a client method: a UUID for references, "x" otherwise."""
    args = []
    for param in list(inspect.signature(method).parameters.values())[1:]:
        if (
            param.default is not inspect.Parameter.empty
            or param.kind != param.POSITIONAL_OR_KEYWORD
        ):
            break
        refs = ("uuid", "ref", "instance", "network", "interface", "blob", "op")
        args.append(UUID if any(r in param.name for r in refs) else "x")
    return args


def client_methods() -> Iterator[tuple[str, Any]]:
    """The public request-making methods of apiclient.Client."""
    for name, method in inspect.getmembers(apiclient.Client, inspect.isfunction):
        if not name.startswith("_") and name != "check_capability":
            yield name, method


def recorded_requests() -> dict[str, tuple[str, str]]:
    """Client method -> the (method, path) of the first request it sends."""
    sent: dict[str, tuple[str, str]] = {}
    client = object.__new__(apiclient.Client)
    client.namespace, client.root_html, client.async_strategy = "system", "", "pause"
    name = ""

    def record(_self: Any, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        sent[name] = (method, url.split("?")[0])
        raise Sent

    client._request_url = record.__get__(client)
    client.check_capability = lambda _token: True
    for name, method in client_methods():
        try:
            method(client, *placeholders(method))
        except Sent:
            pass
        except Exception:
            assert name in UNRECORDED, name
    return sent


def served(method: str, path: str) -> bool:
    """Whether a route of the gateway's table takes METHOD on path."""
    for route in all_routes():
        pattern = re.sub(
            r"\{\w+(:[^}]*)?\}",
            lambda m: ".+" if m.group(1) else "[^/]+",
            route.path,
        )
        if route.method == method and re.fullmatch(pattern, path):
            return True
    return False


def test_the_list_of_unserved_calls_is_exactly_what_the_client_cannot_reach() -> None:
    """Each client request is served by a route, or its method is in UNSERVED_CALLS."""
    unserved = {
        name for name, (method, path) in recorded_requests().items() if not served(method, path)
    }
    assert unserved == set(UNSERVED_CALLS)


@pytest.fixture
async def gateway(plane: ControlPlane) -> AsyncIterator[str]:
    """The URL of a gateway in front of the plane."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    yield url
    await runner.cleanup()


def make_client(url: str) -> Any:
    """A real client of the gateway, as system (made in a thread: it calls the gateway)."""
    return apiclient.Client(
        base_url=url,
        namespace="system",
        key=SYSTEM_KEY,
        suppress_configuration_lookup=True,
        async_strategy="pause",
    )


async def outcome(client: Any, name: str, ask_anyway: bool) -> BaseException | None:
    """What calling the client method raises (ask_anyway: as if every token were advertised)."""

    def run() -> BaseException | None:
        if ask_anyway:
            client.check_capability = lambda _token: True
        method = getattr(client, name)
        try:
            method(*placeholders(getattr(apiclient.Client, name)))
        except Exception as exc:
            return exc
        return None

    return await asyncio.wait_for(asyncio.to_thread(run), 30)


@pytest.mark.parametrize("name", sorted(UNSERVED_CALLS))
async def test_an_unserved_call_is_a_clean_not_found_in_the_client(gateway: str, name: str) -> None:
    """Sent anyway, the request is 404 "<METHOD> <path> is not implemented"; gated, not sent."""
    client = await asyncio.to_thread(make_client, gateway)
    token = UNSERVED_CALLS[name]
    if token:
        assert token not in client.root_html, token
        refused = await outcome(client, name, ask_anyway=False)
        assert isinstance(refused, apiclient.IncapableException), (name, refused)
    error = await outcome(client, name, ask_anyway=True)
    assert isinstance(error, apiclient.ResourceNotFoundException), (name, error)
    assert error.status_code == 404
    assert re.fullmatch(r'\{"error":"[A-Z]+ /\S+ is not implemented","status":404\}', error.text), (
        error.text
    )
