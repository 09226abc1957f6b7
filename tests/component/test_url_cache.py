"""Caching an image from a URL (ArtifactService.CacheUrl): what it answers, what it fetches,
what it stores, and what it refuses.

The control plane under test may reach 127.0.0.1 (MINICLOUD_ARTIFACT_FETCH_ALLOW),
where the test's own image server listens; everything else keeps the defaults.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from client.cli import main
from controlplane.app import ControlPlane, start
from protos import (
    artifacts_pb2,
    artifacts_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    instances_pb2,
    networks_pb2,
    networks_pb2_grpc,
)
from tests.component.conftest import (
    SYSTEM_KEY,
    Api,
    FakeNode,
    authed,
    create_request,
    make_api,
    namespace_api,
    plane_settings,
    start_fake_node,
)
from tests.component.imageserver import ImageServer, serve_images

IMAGE = os.urandom(4 * 1024 * 1024 + 123)
LIMIT = 5 * 1024 * 1024


@pytest.fixture
async def images() -> AsyncIterator[ImageServer]:
    """The test's image server on 127.0.0.1."""
    files = {"/debian.qcow2": IMAGE, "/copy/debian.qcow2": IMAGE, "/big.img": b"x" * (LIMIT + 1)}
    async with serve_images(files) as server:
        yield server


async def plane_with(tmp_path: Path, **changes: Any) -> ControlPlane:
    """A control plane with a 5 MiB limit, a 2 s timeout, and the settings changed."""
    settings = plane_settings(tmp_path / "cp")
    settings = dataclasses.replace(
        settings,
        artifact_fetch_max_bytes=LIMIT,
        artifact_fetch_timeout=2.0,
        **changes,
    )
    return await start(settings)


@pytest.fixture
async def plane(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane that may fetch from 127.0.0.1 (only)."""
    cp = await plane_with(tmp_path, artifact_fetch_allow=("127.0.0.1/32",))
    yield cp
    await cp.stop(0)


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    """A control plane with the default address policy (loopback refused)."""
    cp = await plane_with(tmp_path)
    yield cp
    await cp.stop(0)


class Stubs:
    """The artifact and blob services of a plane, as system."""

    def __init__(self, artifacts: Any, blobs: Any) -> None:
        self.artifacts = artifacts
        self.blobs = blobs

    async def cache(self, url: str, name: str = "") -> artifacts_pb2.Artifact:
        request = artifacts_pb2.CacheUrlRequest(url=url, name=name)
        art: artifacts_pb2.Artifact = await self.artifacts.CacheUrl(request)
        return art

    async def settled(self, ref: str, timeout: float = 10) -> artifacts_pb2.Artifact:
        """The artifact once its fetch has ended."""
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            art: artifacts_pb2.Artifact = await self.artifacts.GetArtifact(
                artifacts_pb2.ArtifactRef(ref=ref)
            )
            if art.fetch.state != "fetching":
                return art
            assert asyncio.get_running_loop().time() < deadline, art
            await asyncio.sleep(0.02)

    async def messages(self, ref: str) -> list[str]:
        """The artifact's event messages, oldest first."""
        found = await self.artifacts.GetEvents(instances_pb2.GetEventsRequest(ref=ref, limit=100))
        return [e.message for e in reversed(found.events)]

    async def live_blobs(self) -> list[blobs_pb2.Blob]:
        return list((await self.blobs.ListBlobs(blobs_pb2.ListBlobsRequest())).blobs)


async def stubs_of(plane: ControlPlane) -> Stubs:
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}")
    return Stubs(
        await authed(artifacts_pb2_grpc.ArtifactServiceStub, channel),
        await authed(blobs_pb2_grpc.BlobServiceStub, channel),
    )


@pytest.fixture
async def stubs(plane: ControlPlane) -> Stubs:
    return await stubs_of(plane)


def nothing_half_made(plane: ControlPlane) -> None:
    """The blob folder holds no partial download."""
    folder = plane.parts.settings.data_dir / "blobs"
    assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []


async def test_a_url_is_answered_at_once_then_fetched_with_progress_and_events(
    stubs: Stubs, images: ImageServer
) -> None:
    """CacheUrl answers a new artifact in state initial; the fetch then adds version 1."""
    art = await stubs.cache(images.url("/debian.qcow2"))
    assert (art.type, art.name, art.state) == ("upload", "debian.qcow2", "initial")
    assert art.fetch.state == "fetching" and art.source_url == images.url("/debian.qcow2")
    done = await stubs.settled(art.uuid)
    assert (done.state, done.error, [v.index for v in done.versions]) == ("created", "", [1])
    assert (done.fetch.state, done.fetch.fetched, done.fetch.size) == (
        "done",
        len(IMAGE),
        len(IMAGE),
    )
    blob = await stubs.blobs.GetBlob(blobs_pb2.BlobRef(uuid=done.blob_uuid))
    assert blob.sha512 == hashlib.sha512(IMAGE).hexdigest() and blob.size == len(IMAGE)
    messages = await stubs.messages(art.uuid)
    assert messages[:3] == ["artifact created", "fetch requested", "fetching"]
    assert messages[-1] == "fetch complete: version 1 added"
    assert any(m.startswith("fetched ") and "%" in m for m in messages)
    assert images.hits == ["/debian.qcow2"]


async def test_a_cached_image_is_a_disk_base_like_an_upload(
    api: Api, node: FakeNode, stubs: Stubs, images: ImageServer
) -> None:
    """sf://upload/NAMESPACE/NAME and a label of its blob resolve to the fetched blob."""
    art = await stubs.settled((await stubs.cache(images.url("/debian.qcow2"), "deb")).uuid)
    await stubs.artifacts.FromBlob(
        artifacts_pb2.FromBlobRequest(name="golden", blob_uuid=art.blob_uuid, type="label")
    )
    for i, base in enumerate(("sf://upload/system/deb", "label:golden")):
        inst = await api.Create(create_request(f"vm{i}", disks=[{"size_gb": 1, "base": base}]))
        assert inst.spec.disks[0].base == f"sf://blob/{art.blob_uuid}"
        await api.wait_for(inst.uuid, lambda i: i.state == "created")


async def test_a_base_still_being_fetched_is_refused_as_not_ready(
    api: Api, stubs: Stubs, images: ImageServer
) -> None:
    """Creating from an artifact with no version yet is FAILED_PRECONDITION, nothing stored."""
    await stubs.cache(images.url("/slow"), "slow")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(create_request(disks=[{"size_gb": 1, "base": "sf://upload/system/slow"}]))
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "still being fetched" in (info.value.details() or "")


async def test_the_same_content_is_stored_once_and_adds_no_version_twice(
    stubs: Stubs, images: ImageServer
) -> None:
    """Two URLs serving the same bytes share one blob; caching a URL again adds no version."""
    first = await stubs.settled((await stubs.cache(images.url("/debian.qcow2"))).uuid)
    other = await stubs.settled((await stubs.cache(images.url("/copy/debian.qcow2"), "b")).uuid)
    assert other.blob_uuid == first.blob_uuid
    again = await stubs.settled((await stubs.cache(images.url("/debian.qcow2"))).uuid)
    assert again.uuid == first.uuid and [v.index for v in again.versions] == [1]
    assert (await stubs.messages(first.uuid))[-1] == (
        "fetch complete: version 1 already holds this content"
    )
    blob = await stubs.blobs.GetBlob(blobs_pb2.BlobRef(uuid=first.blob_uuid))
    assert blob.reference_count == 2
    assert [b.uuid for b in await stubs.live_blobs()] == [first.blob_uuid]


async def test_a_url_already_being_fetched_is_not_fetched_again(
    stubs: Stubs, images: ImageServer
) -> None:
    """A second request while the first fetch runs answers the same artifact, no new fetch."""
    first = await stubs.cache(images.url("/slow"), "slow")
    second = await stubs.cache(images.url("/slow"), "slow")
    assert second.uuid == first.uuid and second.fetch.state == "fetching"
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.cache(images.url("/debian.qcow2"), "slow")
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    done = await stubs.settled(first.uuid)
    assert done.state == "error"
    assert images.hits == ["/slow"]


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/big.img", f"more than the {LIMIT} allowed"),
        ("/endless", f"more than the {LIMIT} bytes allowed"),
        ("/slow", "timed out after 2 s"),
        ("/missing.img", "answered HTTP 404"),
    ],
)
async def test_failed_fetches_end_in_error_with_the_reason_and_store_nothing(
    plane: ControlPlane, stubs: Stubs, images: ImageServer, path: str, reason: str
) -> None:
    """Too big (announced or sent), too slow, or not there: state error, reason in the events."""
    art = await stubs.settled((await stubs.cache(images.url(path), "img")).uuid)
    assert art.state == "error" and reason in art.error, art.error
    assert art.fetch.state == "failed" and list(art.versions) == []
    assert (await stubs.messages(art.uuid))[-1] == f"fetch failed: {art.error}"
    assert await stubs.live_blobs() == []
    nothing_half_made(plane)


async def test_a_failed_fetch_keeps_the_versions_the_artifact_had(
    stubs: Stubs, images: ImageServer
) -> None:
    """A later fetch that fails leaves the artifact in error, its old version still there."""
    good = await stubs.settled((await stubs.cache(images.url("/debian.qcow2"), "img")).uuid)
    bad = await stubs.settled((await stubs.cache(images.url("/missing.img"), "img")).uuid)
    assert bad.uuid == good.uuid and bad.state == "error"
    assert [v.blob_uuid for v in bad.versions] == [good.blob_uuid]
    healed = await stubs.settled((await stubs.cache(images.url("/debian.qcow2"), "img")).uuid)
    assert (healed.state, healed.error) == ("created", "")


@pytest.mark.parametrize(
    ("host", "path", "reason"),
    [
        ("127.0.0.1", "/debian.qcow2", "127.0.0.1 is a loopback address"),
        ("localhost", "/debian.qcow2", "localhost resolves only to refused addresses: "),
        ("169.254.169.254", "/latest/meta-data/", "169.254.169.254 is a link-local address"),
        ("10.1.2.3", "/x.img", "10.1.2.3 is a private address"),
        ("[::1]", "/x.img", "::1 is a loopback address"),
    ],
)
async def test_refused_addresses_are_never_connected_to(
    guarded: ControlPlane, images: ImageServer, host: str, path: str, reason: str
) -> None:
    """With the default policy, loopback, link-local and private addresses end in error."""
    stubs = await stubs_of(guarded)
    url = images.url(path, host)
    art = await stubs.settled((await stubs.cache(url, "img")).uuid)
    assert art.state == "error" and reason in art.error, art.error
    assert images.hits == []
    assert await stubs.live_blobs() == []


async def test_the_clusters_own_networks_are_refused(
    guarded: ControlPlane, images: ImageServer
) -> None:
    """An address in a virtual network's netblock is refused, even a public one."""
    stubs = await stubs_of(guarded)
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{guarded.port}")
    networks = await authed(networks_pb2_grpc.NetworkServiceStub, channel)
    await networks.Create(networks_pb2.CreateNetworkRequest(name="n", netblock="198.51.100.0/24"))
    art = await stubs.settled((await stubs.cache("http://198.51.100.7/x.img", "img")).uuid)
    assert art.state == "error"
    assert "198.51.100.7 is in one of the cluster's own networks" in art.error


async def test_a_redirect_to_a_refused_address_is_not_followed(
    stubs: Stubs, images: ImageServer
) -> None:
    """Each redirect is checked like the first URL: 127.0.0.2 is not in the allowed 127.0.0.1/32."""
    target = images.url("/debian.qcow2", "127.0.0.2")
    art = await stubs.settled((await stubs.cache(images.url(f"/redirect?to={target}"), "r")).uuid)
    assert art.state == "error" and "127.0.0.2 is a loopback address" in art.error, art.error
    assert images.hits == [f"/redirect?to={target}"]


async def test_a_redirect_to_an_allowed_address_is_followed(
    stubs: Stubs, images: ImageServer
) -> None:
    """A redirect within what may be reached is followed to the image."""
    target = images.url("/debian.qcow2")
    art = await stubs.settled((await stubs.cache(images.url(f"/redirect?to={target}"), "r")).uuid)
    assert art.state == "created" and art.versions[0].blob_uuid
    assert images.hits == [f"/redirect?to={target}", "/debian.qcow2"]


async def test_a_redirect_to_another_scheme_is_refused(stubs: Stubs, images: ImageServer) -> None:
    """Redirects may lead only to http or https."""
    url = images.url("/redirect?to=file:///etc/passwd")
    art = await stubs.settled((await stubs.cache(url, "r")).uuid)
    assert art.state == "error" and "only http and https" in art.error, art.error


@pytest.mark.parametrize(
    "url",
    ["ftp://127.0.0.1/x.img", "file:///etc/passwd", "gopher://x/", "http:///nohost", "x.img"],
)
async def test_unsupported_urls_are_invalid_and_store_nothing(stubs: Stubs, url: str) -> None:
    """Only http and https URLs naming a host are taken; nothing is stored for others."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await stubs.cache(url, "x")
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    listed = await stubs.artifacts.ListArtifacts(artifacts_pb2.ListArtifactsRequest())
    assert list(listed.artifacts) == []


async def test_a_name_is_made_from_the_url_when_none_is_given(
    stubs: Stubs, images: ImageServer
) -> None:
    """Without a name, the artifact is named after the URL's file, else its host."""
    assert (await stubs.cache(images.url("/debian.qcow2?x=1"))).name == "debian.qcow2"
    assert (await stubs.cache(images.url("/"))).name == "127.0.0.1"


async def test_only_system_artifacts_can_be_cached_shared(
    plane: ControlPlane, images: ImageServer
) -> None:
    """shared=true from another namespace is FAILED_PRECONDITION; from system it shares it."""
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}")
    stubs = await stubs_of(plane)
    shared = await stubs.artifacts.CacheUrl(
        artifacts_pb2.CacheUrlRequest(url=images.url("/debian.qcow2"), shared=True)
    )
    assert shared.shared
    await stubs.settled(shared.uuid)
    other = await namespace_api(channel, "team")
    team = type(stubs.artifacts)(artifacts_pb2_grpc.ArtifactServiceStub(channel), other.metadata)
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await team.CacheUrl(
            artifacts_pb2.CacheUrlRequest(url=images.url("/debian.qcow2"), shared=True)
        )
    assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_a_fetch_cut_short_by_a_restart_is_marked_failed(
    tmp_path: Path, images: ImageServer
) -> None:
    """A control plane stopped mid-fetch marks that fetch failed when it starts again."""
    settings = dataclasses.replace(
        plane_settings(tmp_path / "cp"),
        artifact_fetch_allow=("127.0.0.1/32",),
        artifact_fetch_timeout=60.0,
    )
    first = await start(settings)
    stubs = await stubs_of(first)
    art = await stubs.cache(images.url("/slow"), "slow")
    await first.stop(0)
    again = await start(settings)
    try:
        found = await (await stubs_of(again)).settled(art.uuid)
        assert found.state == "error" and "interrupted" in found.error
    finally:
        await again.stop(0)


async def test_a_node_fetches_the_cached_blob_not_the_url(
    plane: ControlPlane, images: ImageServer
) -> None:
    """The node gets the base from the control plane's blob store: the URL is fetched once."""
    stubs = await stubs_of(plane)
    art = await stubs.settled((await stubs.cache(images.url("/debian.qcow2"), "deb")).uuid)
    node = await start_fake_node(f"127.0.0.1:{plane.port}")
    try:
        api = await make_api(grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}"))
        for i in range(2):
            inst = await api.Create(
                create_request(f"v{i}", disks=[{"size_gb": 1, "base": "sf://upload/system/deb"}])
            )
            await api.wait_for(inst.uuid, lambda i: i.state == "created")
        assert inst.spec.disks[0].base == f"sf://blob/{art.blob_uuid}"
        assert images.hits == ["/debian.qcow2"]
    finally:
        await node.close()


async def test_the_cli_caches_a_url_with_a_progress_bar_until_it_is_created(
    plane: ControlPlane, images: ImageServer, capsys: pytest.CaptureFixture[str]
) -> None:
    """`minicloud artifact cache URL --name NAME` waits, drawing progress, and shows the result."""
    argv = ["--api", f"127.0.0.1:{plane.port}", "--plaintext", "--key", SYSTEM_KEY, "--json"]
    cache = ["artifact", "cache", images.url("/debian.qcow2"), "--name", "deb"]
    code = await asyncio.to_thread(main, [*argv, *cache])
    out, err = capsys.readouterr()
    assert code == 0, err
    art = json.loads(out)
    assert (art["name"], art["state"], len(art["versions"])) == ("deb", "created", 1)
    assert "fetch deb" in err and "100%" in err
    code = await asyncio.to_thread(main, [*argv, "artifact", "cache", images.url("/nope.img")])
    out, err = capsys.readouterr()
    assert code == 1 and "the fetch failed: " in err and "HTTP 404" in err


async def test_the_cli_trusts_and_untrusts_namespaces(
    plane: ControlPlane, capsys: pytest.CaptureFixture[str]
) -> None:
    """`minicloud namespace trust/untrust` change what the namespace trusts."""
    argv = ["--api", f"127.0.0.1:{plane.port}", "--plaintext", "--key", SYSTEM_KEY]
    for name in ("maker", "user"):
        assert await asyncio.to_thread(main, [*argv, "namespace", "create", name]) == 0
    capsys.readouterr()
    code = await asyncio.to_thread(main, [*argv, "namespace", "trust", "maker", "user"])
    out, _ = capsys.readouterr()
    assert code == 0 and out.splitlines()[1].split()[-1] == "user"
    code = await asyncio.to_thread(main, [*argv, "--json", "namespace", "untrust", "maker", "user"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["trusted"] == []
    code = await asyncio.to_thread(main, [*argv, "namespace", "trust", "maker", "nobody"])
    _, err = capsys.readouterr()
    assert code == 1 and "NOT_FOUND" in err
