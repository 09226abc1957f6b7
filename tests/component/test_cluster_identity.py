"""One cluster, one identity: nodes serve one cluster, and never lose what is not theirs.

The control plane makes its cluster's id at first start and names it to
every node agent it accepts; a node agent records it and refuses any other
cluster's control plane. A domain that records no cluster (made by an older
node agent, perhaps another cluster's under the same node name) is removed
only if the control plane knows its instance.
"""

from __future__ import annotations

import asyncio
import tempfile
import uuid as uuidlib
from pathlib import Path

import pytest

from controlplane.app import ControlPlane
from controlplane.store.cluster import KEY, ClusterMismatch, cluster_identity
from controlplane.store.memory import MemoryStore
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.hypervisor.protocol import DomainState
from tests.component.conftest import start_fake_node


async def test_a_new_store_gets_an_id_and_keeps_it() -> None:
    """The first start stores an id (the CA's when given); later starts read the same."""
    store = MemoryStore()
    made = await cluster_identity(store)
    assert made and await cluster_identity(store) == made
    assert (await store.get(KEY)) is not None
    from_ca = MemoryStore()
    assert await cluster_identity(from_ca, "ca-cluster") == "ca-cluster"


async def test_a_store_of_another_cluster_than_its_ca_refuses_to_start() -> None:
    """A CA of another cluster than the store's is ClusterMismatch, naming both."""
    store = MemoryStore()
    await cluster_identity(store, "one")
    with pytest.raises(ClusterMismatch, match=r"cluster one.*cluster two"):
        await cluster_identity(store, "two")


async def test_a_node_records_its_cluster_and_refuses_another(plane: ControlPlane) -> None:
    """A node agent that served another cluster never registers with this control plane."""
    fresh = await start_fake_node(f"127.0.0.1:{plane.port}", "joiner")
    assert (fresh.settings.data_dir / "cluster-id").read_text().strip() == plane.parts.cluster_id
    await fresh.close()
    data_dir = Path(tempfile.mkdtemp(prefix="mcn-", dir="/tmp"))
    (data_dir / "cluster-id").write_text("some-other-cluster\n")
    stranger = await start_fake_node(
        f"127.0.0.1:{plane.port}", "stranger", wait=False, data_dir=data_dir
    )
    await asyncio.sleep(1.0)  # several dials (backoff 0.05-0.2 s)
    assert not stranger.stream.connected.is_set()
    assert not plane.nodes.connected("stranger")
    await stranger.close()


async def test_an_unknown_legacy_domain_is_left_alone_and_an_unknown_own_one_removed(
    plane: ControlPlane,
) -> None:
    """Inventory: a domain recording no cluster stays; one recording this cluster goes."""
    hypervisor = FakeHypervisor()
    legacy, own = str(uuidlib.uuid4()), str(uuidlib.uuid4())
    hypervisor.domains[legacy] = DomainState(legacy, "on", legacy=True)
    hypervisor.domains[own] = DomainState(own, "on")
    node = await start_fake_node(f"127.0.0.1:{plane.port}", "host", hypervisor=hypervisor)
    deadline = asyncio.get_running_loop().time() + 5
    while own in hypervisor.domains:
        assert asyncio.get_running_loop().time() < deadline, "the orphan was not removed"
        await asyncio.sleep(0.05)
    await asyncio.sleep(0.3)
    assert legacy in hypervisor.domains
    await node.close()
