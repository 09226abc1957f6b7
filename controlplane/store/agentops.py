"""Agent operation records and the per-instance queue index.

Key layout:

    op/<uuid>                                  operation record (JSON)
    opq/<instance uuid>/<created ns, 20 digits>/<uuid>   per-instance index, oldest first
    opwait/<instance uuid>/<created ns, 20 digits>/<uuid>  the same, for queued ones only
"""

from __future__ import annotations

from controlplane.model import AgentOperation, decode_operation, encode
from controlplane.store.protocol import Delete, Op, Put, Store


def _key(uuid: str) -> bytes:
    return f"op/{uuid}".encode()


def _index_key(op: AgentOperation, prefix: str = "opq") -> bytes:
    return f"{prefix}/{op.instance_uuid}/{int(op.created_at * 1e9):020d}/{op.uuid}".encode()


def _queue_ops(old: AgentOperation | None, new: AgentOperation) -> list[Op]:
    """Keep the queued-only index in step with the operation's state."""
    was = old is not None and old.state == "queued"
    if new.state == "queued" and not was:
        return [Put(_index_key(new, "opwait"), b"")]
    if was and new.state != "queued":
        return [Delete(_index_key(new, "opwait"))]
    return []


class AgentOperations:
    """Reads and writes agent operations."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def get(self, uuid: str) -> AgentOperation | None:
        """An operation by UUID, or None."""
        item = await self.store.get(_key(uuid))
        return (
            None
            if item is None
            else decode_operation(item.value).with_changes(version=item.version)
        )

    async def create(self, op: AgentOperation) -> AgentOperation:
        """Store a new operation and index it under its instance."""
        await self.store.commit(
            [
                Put(_key(op.uuid), encode(op), expect=0),
                Put(_index_key(op), b""),
                *_queue_ops(None, op),
            ]
        )
        return op.with_changes(version=1)

    async def update(self, old: AgentOperation, new: AgentOperation) -> AgentOperation:
        """Replace old with new if nobody changed it meanwhile (else Conflict)."""
        await self.store.commit(
            [Put(_key(new.uuid), encode(new), expect=old.version), *_queue_ops(old, new)]
        )
        return new.with_changes(version=old.version + 1)

    async def for_instance(self, instance_uuid: str) -> list[AgentOperation]:
        """An instance's operations, oldest first."""
        found = []
        for item in await self.store.scan(f"opq/{instance_uuid}/".encode()):
            op = await self.get(item.key.decode().rsplit("/", 1)[1])
            if op is not None:
                found.append(op)
        return found

    async def next_queued(self, instance_uuid: str) -> AgentOperation | None:
        """The instance's oldest queued operation, or None (reads only that one)."""
        items = await self.store.scan(f"opwait/{instance_uuid}/".encode(), limit=1)
        return await self.get(items[0].key.decode().rsplit("/", 1)[1]) if items else None

    async def all_in_state(self, state: str) -> list[AgentOperation]:
        """Every operation in a state (a full scan; used at start-up)."""
        found = []
        for item in await self.store.scan(b"op/"):
            op = decode_operation(item.value).with_changes(version=item.version)
            if op.state == state:
                found.append(op)
        return found
