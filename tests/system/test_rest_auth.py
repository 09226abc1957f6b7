"""Namespaces through REST: isolation, bad keys, and tokens refreshed by the client.

The control plane's tokens live MINICLOUD_TOKEN_TTL seconds here (short), so a
client that keeps working across that time has re-authenticated by itself.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from shakenfist_client import apiclient

from tests.system.conftest import Cluster
from tests.system.rest_helpers import client, wait_agent_ready

pytestmark = pytest.mark.system
TOKEN_TTL = 5


@pytest.fixture(scope="module")
def cluster(guest_image: Path) -> Iterator[Cluster]:
    """A cluster whose tokens expire after TOKEN_TTL seconds (no skew allowed)."""
    # No clock skew allowance: one machine, one clock, and a token dead right at its expiry.
    wanted = {
        "MINICLOUD_TOKEN_TTL": str(TOKEN_TTL),
        "MINICLOUD_TOKEN_CLOCK_SKEW": "0",
        "MINICLOUD_GATEWAY_TOKEN_CLOCK_SKEW": "0",
    }
    saved = {name: os.environ.get(name) for name in wanted}
    os.environ.update(wanted)
    try:
        c = Cluster.launch(
            guest_image, Path(os.environ.get("MINICLOUD_TEST_ROOT", "/var/lib/mc/t"))
        )
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name)
            else:
                os.environ[name] = value
    try:
        yield c
    finally:
        c.shutdown()


@pytest.fixture(scope="module")
def system(cluster: Cluster) -> apiclient.Client:
    """A client in the system namespace."""
    return client(cluster)


@pytest.fixture(scope="module")
def other(cluster: Cluster, system: apiclient.Client) -> apiclient.Client:
    """A client of a second namespace, made through REST."""
    system._request_url(
        "POST", "/auth/namespaces", data={"namespace": "other", "key_name": "k1", "key": "sekrit"}
    )
    return client(cluster, "other", "sekrit")


def test_a_bad_key_gets_401(cluster: Cluster, system: apiclient.Client) -> None:
    """A wrong key is refused with 401 (after the client's one retry)."""
    with pytest.raises(apiclient.UnauthenticatedException) as caught:
        client(cluster, "system", "wrong").get_instances()
    assert caught.value.status_code == 401


def test_a_second_namespace_cannot_see_change_or_exec(
    cluster: Cluster, system: apiclient.Client, other: apiclient.Client
) -> None:
    """Another namespace's instance is a 404 for get, power, exec, agent ops and delete."""
    inst = system.create_instance(
        "private",
        1,
        256,
        None,
        [{"size": 2, "base": "debian:11", "bus": None, "type": "disk"}],
        None,
        None,
    )
    uuid = inst["uuid"]
    wait_agent_ready(system, uuid)
    assert uuid not in [i["uuid"] for i in other.get_instances()]
    calls: list[Callable[[], Any]] = [
        lambda: other.get_instance(uuid),
        lambda: other.get_instance("private"),
        lambda: other.power_off_instance(uuid),
        lambda: other.instance_execute(uuid, "true"),
        lambda: other.get_instance_agentoperations(uuid, all=True),
        lambda: other.get_instance_events(uuid),
        lambda: other.delete_instance(uuid),
    ]
    for call in calls:
        with pytest.raises(apiclient.ResourceNotFoundException):
            call()
    op = system.instance_execute(uuid, "true")
    with pytest.raises(apiclient.ResourceNotFoundException):
        other.get_agent_operation(op["uuid"])
    assert system.get_instance(uuid)["power_state"] == "on"
    mine = other.create_instance(
        "private",
        1,
        256,
        None,
        [{"size": 2, "base": "debian:11", "bus": None, "type": "disk"}],
        None,
        None,
    )
    assert mine["namespace"] == "other" and mine["uuid"] != uuid
    other.delete_instance(mine["uuid"])
    system.delete_instance(uuid)


def test_an_expired_token_is_refreshed_transparently(
    cluster: Cluster, system: apiclient.Client
) -> None:
    """A client keeps working after its token expires: the 401 makes it re-authenticate."""
    sf = client(cluster)
    sf.get_instances()
    first = sf.cached_auth
    time.sleep(TOKEN_TTL + 2)
    sf.get_instances()
    assert sf.cached_auth != first
