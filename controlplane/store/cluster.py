"""The cluster's identity: one id, made at first start and kept in the store.

Key layout:

    config/cluster-id    the cluster's id (text)

With TLS the id comes from the cluster's CA (``minicloud-ca init`` writes it
into the CA's subject), so the CA and the store always name one cluster; a
store that names another cluster than the CA refuses to start.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable

from controlplane.store.protocol import Conflict, Put, Store

KEY = b"config/cluster-id"


class ClusterMismatch(RuntimeError):
    """The store belongs to another cluster than the one asked for."""


async def cluster_identity(
    store: Store, wanted: str = "", make: Callable[[], str] = lambda: str(uuid.uuid4())
) -> str:
    """The cluster's id: the stored one, else wanted (or a new one) stored now.

    ClusterMismatch when wanted is given and the store already names another.
    """
    item = await store.get(KEY)
    if item is None:
        # Another control plane may store it first: then read what it wrote.
        with contextlib.suppress(Conflict):
            await store.commit([Put(KEY, (wanted or make()).encode(), expect=0)])
        item = await store.get(KEY)
        assert item is not None
    found = item.value.decode()
    if wanted and found != wanted:
        raise ClusterMismatch(
            f"the store belongs to cluster {found}, but the CA is cluster {wanted}'s"
        )
    return found
