"""Two clusters on one libvirtd, even with one node name, never see each other's domains.

A domain records its node and its cluster; a driver manages only its own,
plus legacy ones (made before domains recorded a cluster) of its node name,
which it flags so that its control plane removes them only if it knows them.
Domains are defined without starting them: ownership needs no running guest.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nodeagent.hypervisor.libvirt_driver import LibvirtHypervisor
from nodeagent.hypervisor.protocol import DomainNotFound
from tests.contract.conftest import LIBVIRT_URI, Backend

pytestmark = pytest.mark.system


def driver(root: Path, cluster: str) -> LibvirtHypervisor:
    """A driver of node "shared-node" serving cluster ("" : an older node agent)."""
    found = LibvirtHypervisor(
        sockets_dir=root / "instances", uri=LIBVIRT_URI, domain_type="qemu", node_name="shared-node"
    )
    found.claim(cluster)
    return found


@pytest.fixture
async def drivers(work_dir: Path) -> AsyncIterator[dict[str, LibvirtHypervisor]]:
    made = {name: driver(work_dir, cluster) for name, cluster in (("a", "A"), ("b", "B"))}
    made["old"] = driver(work_dir, "")
    yield made
    for one in made.values():
        await one.close()


async def define(backend: Backend, hypervisor: LibvirtHypervisor) -> str:
    """Define (not start) a fresh domain through hypervisor; its uuid."""
    spec = backend.new_spec()
    backend.console_log(spec).parent.mkdir(parents=True, exist_ok=True)
    await hypervisor.define_and_start(
        spec, backend.disks_for(spec), backend.console_log(spec), start=False
    )
    return spec.uuid


@pytest.mark.parametrize("backend", ["libvirt"], indirect=True)
async def test_another_clusters_domain_is_invisible_and_untouchable(
    backend: Backend, drivers: dict[str, LibvirtHypervisor]
) -> None:
    """B neither lists, finds, powers nor removes A's domain of the same node name."""
    a, b = drivers["a"], drivers["b"]
    uuid = await define(backend, a)
    assert uuid in {d.uuid for d in await a.list_domains()}
    assert uuid not in {d.uuid for d in await b.list_domains()}
    assert await b.get_domain(uuid) is None
    with pytest.raises(DomainNotFound):
        await b.power(uuid, "on")
    await b.remove(uuid)
    found = await a.get_domain(uuid)
    assert found is not None and not found.legacy
    await a.remove(uuid)


@pytest.mark.parametrize("backend", ["libvirt"], indirect=True)
async def test_a_legacy_domain_is_listed_as_such_and_takes_the_cluster_when_redefined(
    backend: Backend, drivers: dict[str, LibvirtHypervisor]
) -> None:
    """A domain recording no cluster is flagged legacy to every cluster's driver of its node
    name; once one of them defines it again, it is that cluster's and the other loses it."""
    a, b = drivers["a"], drivers["b"]
    uuid = await define(backend, drivers["old"])
    for one in (a, b):
        listed = {d.uuid: d for d in await one.list_domains()}
        assert listed[uuid].legacy
    spec = backend.new_spec(uuid=uuid)
    await a.define_and_start(spec, backend.disks_for(spec), backend.console_log(spec), start=False)
    found = await a.get_domain(uuid)
    assert found is not None and not found.legacy
    b.claim("B-again")  # forget what b read before
    b.claim("B")
    assert await b.get_domain(uuid) is None
    await a.remove(uuid)
