"""Artifact deletion, versions and events, and blob listing, through the real shakenfist-client.

The library (shakenfist-client 0.8.3) runs in a thread against a gateway in
front of a real control plane, exactly as a Shaken Fist user would call it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from shakenfist_client import apiclient

from controlplane.app import ControlPlane
from tests.component.conftest import SYSTEM_KEY, FakeNode
from tests.component.test_gateway import Rest, start_gateway

JsonDict = dict[str, Any]
SF_CLIENT = Path(sys.executable).parent / "sf-client"


class Sf:
    """A shakenfist-client Client whose calls (and making it) run in a thread.

    The client is synchronous and the gateway serves from this test's event
    loop, so nothing of the client may run in the loop itself.
    """

    def __init__(self, url: str, namespace: str = "system", key: str = SYSTEM_KEY) -> None:
        self.url, self.namespace, self.key = url, namespace, key
        self.client: Any = None

    def _make(self) -> Any:
        if self.client is None:
            self.client = apiclient.Client(
                base_url=self.url,
                namespace=self.namespace,
                key=self.key,
                suppress_configuration_lookup=True,
                async_strategy="pause",
            )
        return self.client

    async def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        def run() -> Any:
            return getattr(self._make(), method)(*args, **kwargs)

        return await asyncio.wait_for(asyncio.to_thread(run), 30)


@pytest.fixture
async def gateway(plane: ControlPlane) -> AsyncIterator[str]:
    """The URL of a gateway in front of the plane."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    yield url
    await runner.cleanup()


async def image(sf: Sf, name: str, data: bytes) -> JsonDict:
    """Upload bytes as a new version of the image NAME, as sf-client artifact upload does."""
    upload = await sf("create_upload")
    await sf("send_upload", upload["uuid"], data)
    found: JsonDict = await sf("upload_artifact", name, upload["uuid"])
    return found


async def refused(call: Callable[[], Any], error: type[Exception]) -> apiclient.APIException:
    """The client error a call raises."""
    with pytest.raises(error) as info:
        await call()
    assert isinstance(info.value, apiclient.APIException)
    return info.value


async def test_delete_one_and_delete_all_free_unreferenced_blobs(gateway: str) -> None:
    """delete_artifact and delete_all_artifacts (namespace clean) answer as Shaken Fist."""
    sf = Sf(gateway)
    art = await image(sf, "doomed", b"doomed")
    blob = art["blob_uuid"]
    assert (await sf("get_blob", blob))["reference_count"] == 1
    deleted = await sf("delete_artifact", art["uuid"])
    assert deleted["uuid"] == art["uuid"] and deleted["state"] == "deleted"
    assert deleted["blobs"] == {}
    freed = await sf("get_blob", blob)
    assert (freed["state"], freed["reference_count"]) == ("deleted", 0)
    error = await refused(
        lambda: sf("get_artifact", "upload:doomed"), apiclient.ResourceNotFoundException
    )
    assert error.status_code == 404

    await image(sf, "one", b"1")
    await image(sf, "two", b"2")
    missing_confirm = await refused(
        lambda: sf("_request_url", "DELETE", "/artifacts", data={"namespace": "system"}),
        apiclient.RequestMalformedException,
    )
    assert "confirm" in missing_confirm.text
    unnamed = await refused(
        lambda: sf("delete_all_artifacts", None), apiclient.RequestMalformedException
    )
    assert "namespace" in unnamed.text
    gone = await sf("delete_all_artifacts", "system")
    assert len(gone) == 2 and await sf("get_artifacts") == []


async def test_namespace_clean_empties_a_namespace_of_its_artifacts(
    gateway: str, node: FakeNode
) -> None:
    """sf-client's namespace clean (instances, networks, then artifacts) works for a namespace."""
    sf = Sf(gateway)
    await sf("create_namespace", "team")
    await sf("add_namespace_key", "team", "k", "team-key-123")
    team = Sf(gateway, "team", "team-key-123")
    await image(team, "theirs", b"team bytes")
    await image(sf, "mine", b"system bytes")
    await sf("delete_all_instances", "team")
    await sf("delete_all_networks", "team", clean_wait=True)
    assert len(await sf("delete_all_artifacts", "team")) == 1
    assert await team("get_artifacts") == []
    assert [a["name"] for a in await sf("get_artifacts")] == ["mine"]
    stranger = await refused(
        lambda: team("delete_all_artifacts", "system"), apiclient.UnauthenticatedException
    )
    assert stranger.status_code == 401


async def test_versions_list_delete_and_maximum(gateway: str) -> None:
    """get_artifact_versions, delete_artifact_version and set_artifact_max_versions."""
    sf = Sf(gateway)
    for i in range(1, 5):
        art = await image(sf, "img", f"v{i}".encode())
    assert art["max_versions"] == 3 and art["index"] == 4
    assert sorted(art["blobs"]) == ["2", "3", "4"]
    versions = await sf("get_artifact_versions", art["uuid"])
    assert [(v["index"], v["size"]) for v in versions] == [(2, 2), (3, 2), (4, 2)]
    left = await sf("delete_artifact_version", art["uuid"], "3")
    assert [v["index"] for v in left] == [2, 4]
    art = await image(sf, "img", b"v5")
    assert sorted(art["blobs"]) == ["2", "4", "5"]
    capped = await sf("set_artifact_max_versions", art["uuid"], 2)
    assert capped["max_versions"] == 2 and sorted(capped["blobs"]) == ["4", "5"]
    shown = await sf("get_artifact", art["uuid"])
    assert sorted(shown["blobs"]) == [4, 5]  # get_artifact turns the keys into ints

    for call, error in (
        (
            lambda: sf("set_artifact_max_versions", art["uuid"], 0),
            apiclient.RequestMalformedException,
        ),
        (
            lambda: sf("delete_artifact_version", art["uuid"], "x"),
            apiclient.RequestMalformedException,
        ),
        (
            lambda: sf("delete_artifact_version", art["uuid"], "2"),
            apiclient.ResourceNotFoundException,
        ),
        (lambda: sf("get_artifact_versions", "nope"), apiclient.ResourceNotFoundException),
    ):
        failure = await refused(call, error)
        assert "error" in failure.text
    await sf("delete_artifact_version", art["uuid"], "4")
    await sf("delete_artifact_version", art["uuid"], "5")
    assert (await sf("get_artifact", art["uuid"]))["state"] == "deleted"


async def test_artifact_and_blob_events_and_blob_list(gateway: str, plane: ControlPlane) -> None:
    """get_artifact_events, get_blob_events (blob-events) and get_blobs."""
    sf = Sf(gateway)
    art = await image(sf, "evt", b"events")
    events = await sf("get_artifact_events", "evt")
    assert [e["message"] for e in events] == ["version 1 added", "artifact created"]
    assert {"timestamp", "fqdn", "duration", "message", "extra", "type"} <= set(events[0])
    limited = await sf("get_artifact_events", "evt", event_type="mutate", limit=1)
    assert len(limited) == 1
    assert await sf("check_capability", "blob-events")
    blob_events = await sf("get_blob_events", art["blob_uuid"])
    assert [e["message"] for e in blob_events] == ["reference added", "blob created"]
    blobs = await sf("get_blobs")
    assert [b["uuid"] for b in blobs] == [art["blob_uuid"]]
    assert blobs[0]["instances"] == [] and blobs[0]["reference_count"] == 1
    bad = await refused(
        lambda: sf("get_blob_events", "not-a-uuid"), apiclient.RequestMalformedException
    )
    assert bad.status_code == 400


async def test_another_namespace_cannot_touch_or_see_the_artifacts(gateway: str) -> None:
    """Delete, versions and events of another namespace's artifact are 404."""
    sf = Sf(gateway)
    art = await image(sf, "private", b"private")
    await sf("create_namespace", "other")
    await sf("add_namespace_key", "other", "k", "other-key-123")
    other = Sf(gateway, "other", "other-key-123")
    for method, args in (
        ("delete_artifact", (art["uuid"],)),
        ("get_artifact_versions", (art["uuid"],)),
        ("delete_artifact_version", (art["uuid"], "1")),
        ("set_artifact_max_versions", (art["uuid"], 1)),
        ("get_artifact_events", (art["uuid"],)),
    ):
        with pytest.raises(apiclient.ResourceNotFoundException):
            await other(method, *args)
    assert await other("get_blobs") == []
    assert (await sf("get_artifact", art["uuid"]))["state"] == "created"


async def test_unauthenticated_calls_are_refused_first(gateway: str) -> None:
    """Without a token the new routes answer 401 before looking at the request."""
    import aiohttp

    async with aiohttp.ClientSession() as session:
        rest = Rest(session, gateway)
        for method, path, body in (
            ("DELETE", "/artifacts/upload:x", None),
            ("DELETE", "/artifacts", {"confirm": True, "namespace": "x"}),
            ("GET", "/artifacts/x/versions", None),
            ("POST", "/artifacts/x/versions", {"max_versions": 2}),
            ("DELETE", "/artifacts/x/versions/1", None),
            ("GET", "/artifacts/x/events", None),
            ("GET", "/blobs", None),
            ("GET", "/blobs/00000000-0000-4000-8000-000000000000/events", None),
        ):
            status, answer = await rest.call(method, path, body)
            assert status == 401, (method, path, answer)


async def test_share_and_unshare_a_system_image_used_by_another_namespace(
    gateway: str, node: FakeNode
) -> None:
    """share_artifact makes a system image a disk base for a namespace's own create."""
    sf = Sf(gateway)
    await sf("create_namespace", "team")
    await sf("add_namespace_key", "team", "k", "team-key-123")
    team = Sf(gateway, "team", "team-key-123")
    art = await image(sf, "debian-11", b"debian")
    disk = [{"size": 1, "base": "sf://upload/system/debian-11", "bus": None, "type": "disk"}]
    with pytest.raises(apiclient.ResourceNotFoundException):
        await team("create_instance", "t0", 1, 256, None, disk, None, None)

    await sf("share_artifact", art["uuid"])
    assert (await sf("get_artifact", art["uuid"]))["shared"] is True
    seen = await team("get_artifact", "debian-11")
    assert seen["uuid"] == art["uuid"] and seen["shared"] is True
    assert await team("get_artifact_metadata", art["uuid"]) == {}
    assert [a["name"] for a in await team("get_artifacts")] == ["debian-11"]
    inst = await team("create_instance", "t1", 1, 256, None, disk, None, None)
    assert inst["namespace"] == "team"
    for method in ("delete_artifact", "unshare_artifact"):
        with pytest.raises(apiclient.UnauthorizedException) as info:
            await team(method, art["uuid"])
        assert info.value.status_code == 403

    own = await image(team, "own", b"own")
    refused_share = await refused(
        lambda: team("share_artifact", own["uuid"]), apiclient.UnauthorizedException
    )
    assert "system" in refused_share.text
    upload = await team("create_upload")
    await team("send_upload", upload["uuid"], b"x")
    with pytest.raises(apiclient.UnauthorizedException):
        await team("upload_artifact", "shared-try", upload["uuid"], shared=True)
    upload = await sf("create_upload")
    await sf("send_upload", upload["uuid"], b"shared at once")
    at_once = await sf("upload_artifact", "at-once", upload["uuid"], shared=True)
    assert at_once["shared"] is True

    await sf("unshare_artifact", art["uuid"])
    with pytest.raises(apiclient.ResourceNotFoundException):
        await team("get_artifact", art["uuid"])


async def sf_cli(url: str, *args: str, namespace: str = "system", key: str = SYSTEM_KEY) -> str:
    """Run the real sf-client CLI against the gateway; it must exit 0 without a traceback."""
    env = {
        **os.environ,
        "SHAKENFIST_API_URL": url,
        "SHAKENFIST_NAMESPACE": namespace,
        "SHAKENFIST_KEY": key,
    }
    proc = await asyncio.create_subprocess_exec(
        str(SF_CLIENT),
        *args,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode() + err.decode()
    assert proc.returncode == 0 and "Traceback" not in text, (args, text)
    return out.decode()


async def test_sf_client_artifact_blob_and_namespace_clean_commands(gateway: str) -> None:
    """sf-client's artifact, blob and namespace clean commands run without a traceback."""
    sf = Sf(gateway)
    for i in range(1, 4):
        art = await image(sf, "img", f"version {i}".encode())
    uuid = art["uuid"]
    assert uuid in await sf_cli(gateway, "artifact", "list")
    shown = await sf_cli(gateway, "artifact", "show", uuid)
    assert "maximum versions" in shown and ": 3" in shown
    versions = json.loads(await sf_cli(gateway, "artifact", "versions", uuid))
    assert [v["index"] for v in versions] == [1, 2, 3]
    await sf_cli(gateway, "artifact", "delete-version", uuid, "1")
    await sf_cli(gateway, "artifact", "max-versions", uuid, "1")
    assert "max versions set to 1" in await sf_cli(gateway, "artifact", "events", uuid)
    await sf_cli(gateway, "artifact", "share", uuid)
    assert json.loads(await sf_cli(gateway, "--json", "artifact", "show", uuid))["shared"]
    await sf_cli(gateway, "artifact", "unshare", uuid)
    assert art["blob_uuid"] in await sf_cli(gateway, "blob", "list")
    await sf_cli(gateway, "artifact", "delete", uuid)
    assert json.loads(await sf_cli(gateway, "--json", "artifact", "show", uuid))["state"] == (
        "deleted"
    )

    await sf("create_namespace", "team")
    await sf("add_namespace_key", "team", "k", "team-key-123")
    team = Sf(gateway, "team", "team-key-123")
    await image(team, "theirs", b"team bytes")
    await sf_cli(gateway, "namespace", "clean", "--confirm", "--namespace", "team")
    assert await team("get_artifacts") == []
