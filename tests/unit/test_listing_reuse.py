"""Listing reuses decoded records and their wire messages only while a record is unchanged."""

from __future__ import annotations

from controlplane.api.convert import InstanceMessages
from controlplane.model import DiskSpec, Instance, InstanceSpec
from controlplane.store.memory import MemoryStore
from controlplane.store.records import Records


def instance(uuid: str, name: str = "vm") -> Instance:
    """A small instance record."""
    spec = InstanceSpec(name=name, cpus=1, memory=256, disks=(DiskSpec(1, "debian:11"),))
    return Instance(uuid=uuid, namespace="ns", spec=spec)


async def test_an_unchanged_record_is_decoded_once_and_a_changed_one_again() -> None:
    """Two scans hand out the same object for an unchanged record, a new one after a write."""
    records = Records(MemoryStore())
    stored = await records.create_instance(instance("00000000-0000-4000-8000-000000000001"), [])
    await records.create_instance(instance("00000000-0000-4000-8000-000000000002", "b"), [])
    first = await records.instances_after("", 10)
    again = await records.list_instances()
    assert [a is b for a, b in zip(first, again, strict=True)] == [True, True]
    await records.update_instance(stored, stored.with_changes(state="created"))
    changed = await records.instances_after("", 10)
    assert changed[0] is not first[0] and changed[0].state == "created"
    assert changed[0].version == 2 and changed[1] is first[1]


async def test_instances_after_resumes_past_a_uuid_with_a_limit() -> None:
    """instances_after reads at most limit records, in UUID order, past the UUID given."""
    records = Records(MemoryStore())
    uuids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(5)]
    for i, uuid in enumerate(uuids):
        await records.create_instance(instance(uuid, f"vm{i}"), [])
    assert [i.uuid for i in await records.instances_after(uuids[1], 2)] == uuids[2:4]
    assert await records.instances_after(uuids[4], 2) == []


def test_a_wire_message_is_reused_only_for_the_same_record_object() -> None:
    """InstanceMessages converts a record once, and again when handed a different object."""
    messages = InstanceMessages()
    record = instance("00000000-0000-4000-8000-000000000001")
    pb = messages.message(record)
    assert messages.message(record) is pb
    newer = record.with_changes(state="created")
    assert messages.message(newer) is not pb and messages.message(newer).state == "created"


def test_the_wire_messages_kept_are_bounded() -> None:
    """Past its limit, InstanceMessages drops the oldest entry."""
    messages = InstanceMessages(limit=2)
    records = [instance(f"00000000-0000-4000-8000-00000000000{i}") for i in range(3)]
    pbs = [messages.message(r) for r in records]
    assert messages.message(records[2]) is pbs[2] and messages.message(records[0]) is not pbs[0]
