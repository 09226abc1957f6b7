"""Namespaces, keys, metadata deletes and console clearing over REST, with the real client.

These routes were tested over gRPC only: here the shakenfist-client 0.8.3
library calls each one against a gateway in front of a real control plane,
as a Shaken Fist user would (namespace list, get and delete; key list, add
and delete; namespace metadata get, set and delete; metadata delete on
artifacts, blobs and networks; clearing console data).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from shakenfist_client import apiclient

from controlplane.app import ControlPlane
from tests.component.conftest import FakeNode
from tests.component.test_gateway import start_gateway
from tests.component.test_gateway_artifacts import Sf, image, refused

UNKNOWN = f"{'5' * 8}-5555-5555-5555-{'5' * 12}"


@pytest.fixture
async def gateway(plane: ControlPlane) -> AsyncIterator[str]:
    """The URL of a gateway in front of the plane."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    yield url
    await runner.cleanup()


async def team(sf: Sf, name: str = "team", key: str = "team-key") -> Sf:
    """Make a namespace with one key (as sf-client namespace create and add-key); its client."""
    await sf("create_namespace", name)
    assert await sf("add_namespace_key", name, "deploy", key) == "deploy"
    return Sf(sf.url, name, key)


async def test_namespaces_are_listed_got_and_deleted(gateway: str) -> None:
    """get_namespaces and get_namespace show Shaken Fist's shape; delete_namespace removes it."""
    sf = Sf(gateway)
    await team(sf)
    listed = await sf("get_namespaces")
    names = [n["name"] for n in listed]
    assert "system" in names and "team" in names
    got = await sf("get_namespace", "team")
    assert got["name"] == "team" and got["keys"] == ["deploy"]
    assert got == next(n for n in listed if n["name"] == "team")
    await sf("delete_namespace", "team")
    await refused(lambda: sf("get_namespace", "team"), apiclient.ResourceNotFoundException)
    assert "team" not in [n["name"] for n in await sf("get_namespaces")]


async def test_a_namespace_sees_only_itself_and_may_not_delete(gateway: str) -> None:
    """A namespace's own key lists and gets itself only; deleting is the administrator's."""
    member = await team(Sf(gateway))
    assert [n["name"] for n in await member("get_namespaces")] == ["team"]
    assert (await member("get_namespace", "team"))["name"] == "team"
    await refused(lambda: member("get_namespace", "system"), apiclient.ResourceNotFoundException)
    denied = await refused(
        lambda: member("delete_namespace", "team"), apiclient.UnauthenticatedException
    )
    assert denied.status_code == 401


async def test_the_system_namespace_cannot_be_deleted(gateway: str) -> None:
    """Deleting system is 403, as from Shaken Fist."""
    sf = Sf(gateway)
    found = await refused(lambda: sf("delete_namespace", "system"), apiclient.APIException)
    assert found.status_code == 403


async def test_keys_are_listed_added_and_deleted(gateway: str) -> None:
    """A key added works for logging in and is listed by name; replaced or deleted, it stops."""
    sf = Sf(gateway)
    await team(sf)
    assert await sf("add_namespace_key", "team", "ci", "ci-secret") == "ci"
    assert sorted(await sf("get_namespace_keynames", "team")) == ["ci", "deploy"]
    ci = Sf(gateway, "team", "ci-secret")
    assert [n["name"] for n in await ci("get_namespaces")] == ["team"]
    # update_namespace_key (sf-client namespace update-key) PUTs to /keys with the name in the body.
    assert await sf("update_namespace_key", "team", "ci", "ci-secret-2") == "ci"
    await refused(
        lambda: Sf(gateway, "team", "ci-secret")("get_namespaces"), apiclient.APIException
    )
    assert [n["name"] for n in await Sf(gateway, "team", "ci-secret-2")("get_namespaces")] == [
        "team"
    ]
    await sf("delete_namespace_key", "team", "ci")
    assert await sf("get_namespace_keynames", "team") == ["deploy"]
    await refused(
        lambda: Sf(gateway, "team", "ci-secret-2")("get_namespaces"), apiclient.APIException
    )
    await refused(
        lambda: sf("delete_namespace_key", "team", "ci"), apiclient.ResourceNotFoundException
    )


async def test_another_namespace_cannot_touch_the_keys_of_system(gateway: str) -> None:
    """Key routes on a namespace the caller does not own are refused, not served."""
    member = await team(Sf(gateway))
    for call in (
        lambda: member("get_namespace_keynames", "system"),
        lambda: member("add_namespace_key", "system", "evil", "evil-key"),
        lambda: member("delete_namespace_key", "system", "deploy"),
    ):
        found = await refused(call, apiclient.APIException)
        assert found.status_code in (401, 404)
    assert "evil" not in await Sf(gateway)("get_namespace_keynames", "system")


async def test_namespace_metadata_is_set_read_and_deleted(gateway: str) -> None:
    """set_namespace_metadata_item, get_namespace_metadata, delete_namespace_metadata_item."""
    sf = Sf(gateway)
    await team(sf)
    await sf("set_namespace_metadata_item", "team", "owner", "ops")
    await sf("set_namespace_metadata_item", "team", "limits", {"cpus": 8})
    assert await sf("get_namespace_metadata", "team") == {"owner": "ops", "limits": {"cpus": 8}}
    await sf("delete_namespace_metadata_item", "team", "owner")
    assert await sf("get_namespace_metadata", "team") == {"limits": {"cpus": 8}}
    # Deleting an absent key is not an error (MetadataService.Delete).
    await sf("delete_namespace_metadata_item", "team", "owner")
    await refused(
        lambda: sf("get_namespace_metadata", "nowhere"), apiclient.ResourceNotFoundException
    )


async def test_metadata_is_deleted_from_artifacts_blobs_and_networks(
    gateway: str, node: FakeNode
) -> None:
    """delete_{artifact,blob,network}_metadata_item remove one key and leave the others."""
    sf = Sf(gateway)
    art = await image(sf, "img", b"disk bytes" * 100)
    net = await sf("allocate_network", "10.9.0.0/24", True, False, "net1")
    objects = (
        ("artifact", art["uuid"]),
        ("blob", art["blob_uuid"]),
        ("network", net["uuid"]),
    )
    for kind, ref in objects:
        await sf(f"set_{kind}_metadata_item", ref, "keep", "yes")
        await sf(f"set_{kind}_metadata_item", ref, "drop", "no")
        await sf(f"delete_{kind}_metadata_item", ref, "drop")
        assert await sf(f"get_{kind}_metadata", ref) == {"keep": "yes"}, kind
        await sf(f"delete_{kind}_metadata_item", ref, "drop")  # absent: not an error
    for kind in ("artifact", "blob", "network"):
        method = f"delete_{kind}_metadata_item"
        with pytest.raises(apiclient.ResourceNotFoundException):
            await sf(method, UNKNOWN, "keep")


async def test_console_data_is_cleared(gateway: str, node: FakeNode) -> None:
    """delete_console_data empties the console log get_console_data reads."""
    sf = Sf(gateway)
    disk = [{"size": 1, "base": "debian:11", "bus": None, "type": "disk"}]
    inst = await sf("create_instance", "vm1", 1, 256, [], disk, None, None)
    for _ in range(200):
        inst = await sf("get_instance", inst["uuid"])
        if inst["state"] == "created":
            break
        await asyncio.sleep(0.05)
    assert inst["state"] == "created"
    log = node.settings.instances_dir / inst["uuid"] / "console.log"
    log.write_bytes(b"boot messages\n")
    assert await sf("get_console_data", inst["uuid"], -1) == "boot messages\n"
    await sf("delete_console_data", inst["uuid"])
    assert await sf("get_console_data", inst["uuid"], -1) == ""
    events = await sf("get_instance_events", inst["uuid"])
    assert "console log cleared" in [e["message"] for e in events]
