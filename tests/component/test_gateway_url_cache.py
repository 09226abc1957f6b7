"""Caching from a URL and namespace trust through the REST gateway, with the real
shakenfist-client (library and sf-client) as a Shaken Fist user calls them."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from shakenfist_client import apiclient

from controlplane.app import ControlPlane, start
from tests.component.conftest import plane_settings
from tests.component.imageserver import ImageServer, serve_images
from tests.component.test_gateway import start_gateway
from tests.component.test_gateway_artifacts import JsonDict, Sf, sf_cli

IMAGE = b"a small image" * 4096


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane that may fetch from 127.0.0.1."""
    settings = dataclasses.replace(
        plane_settings(tmp_path / "cp"), artifact_fetch_allow=("127.0.0.1/32",)
    )
    cp = await start(settings)
    yield cp
    await cp.stop(0)


@pytest.fixture
async def images() -> AsyncIterator[ImageServer]:
    async with serve_images({"/cirros.qcow2": IMAGE}) as server:
        yield server


@pytest.fixture
async def gateway(plane: ControlPlane) -> AsyncIterator[str]:
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    yield url
    await runner.cleanup()


async def settled(sf: Sf, ref: str) -> JsonDict:
    """The artifact once it has left state initial."""
    for _ in range(500):
        art: JsonDict = await sf("get_artifact", ref)
        if art["state"] != "initial":
            return art
        await asyncio.sleep(0.02)
    raise AssertionError(f"still initial: {art}")


async def test_sf_client_artifact_cache_fetches_the_url_into_an_image(
    gateway: str, images: ImageServer
) -> None:
    """`sf-client artifact cache URL` works unchanged; the image is then created with one blob."""
    url = images.url("/cirros.qcow2")
    await sf_cli(gateway, "artifact", "cache", url)
    sf = Sf(gateway)
    listed = await sf("get_artifacts")
    assert [(a["artifact_type"], a["source_url"]) for a in listed] == [("image", url)]
    art = await settled(sf, listed[0]["uuid"])
    assert art["state"] == "created" and art["index"] == 1
    assert [b["size"] for b in art["blobs"].values()] == [len(IMAGE)]
    events = await sf("get_artifact_events", art["uuid"])
    assert "fetch complete: version 1 added" in [e["message"] for e in events]


async def test_the_library_caches_shared_and_refuses_shared_to_others(
    gateway: str, images: ImageServer
) -> None:
    """cache_artifact(shared=True) shares a system image; another namespace gets 403."""
    sf = Sf(gateway)
    art = await sf("cache_artifact", images.url("/cirros.qcow2"), shared=True)
    assert art["shared"] is True and art["state"] == "initial"
    await sf("create_namespace", "team")
    await sf("add_namespace_key", "team", "k", "team-key")
    team = Sf(gateway, "team", "team-key")
    with pytest.raises(apiclient.UnauthorizedException):
        await team("cache_artifact", images.url("/cirros.qcow2"), shared=True)
    assert (await settled(team, art["uuid"]))["state"] == "created"


async def test_a_url_that_cannot_be_fetched_is_a_clear_error(gateway: str) -> None:
    """An unsupported scheme is a 400; a refused address leaves the image in error."""
    sf = Sf(gateway)
    with pytest.raises(apiclient.RequestMalformedException):
        await sf("cache_artifact", "file:///etc/passwd")
    art = await sf("cache_artifact", "http://169.254.169.254/latest/x.img")
    found = await settled(sf, art["uuid"])
    assert found["state"] == "error"
    events = await sf("get_artifact_events", art["uuid"])
    assert any("link-local" in e["message"] for e in events)


async def test_sf_client_namespace_trust_shows_the_trusters_artifacts(
    gateway: str, images: ImageServer
) -> None:
    """add-trust lets the trusted namespace see the truster's images; remove-trust hides them."""
    sf = Sf(gateway)
    for name in ("maker", "user"):
        await sf("create_namespace", name)
        await sf("add_namespace_key", name, "k", f"{name}-key")
    maker = Sf(gateway, "maker", "maker-key")
    art = await maker("cache_artifact", images.url("/cirros.qcow2"))
    user = Sf(gateway, "user", "user-key")
    with pytest.raises(apiclient.ResourceNotFoundException):
        await user("get_artifact", art["uuid"])

    shown = json.loads(
        await sf_cli(
            gateway,
            "--json",
            "namespace",
            "add-trust",
            "maker",
            "user",
            namespace="maker",
            key="maker-key",
        )
    )
    assert shown["trust"] == {"full": ["user"]}
    assert (await settled(user, art["uuid"]))["namespace"] == "maker"
    assert art["uuid"] in [a["uuid"] for a in await user("get_artifacts")]
    with pytest.raises(apiclient.UnauthorizedException):
        await user("delete_artifact", art["uuid"])
    assert "user" in await sf_cli(gateway, "namespace", "list")

    await sf_cli(gateway, "namespace", "remove-trust", "maker", "user")
    with pytest.raises(apiclient.ResourceNotFoundException):
        await user("get_artifact", art["uuid"])
    with pytest.raises(apiclient.ResourceNotFoundException):
        await user("add_namespace_trust", "maker", "user")
