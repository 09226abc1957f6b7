"""Artifact and blob records over the in-memory store: versions, deletion, freeing."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

from controlplane.model import Artifact
from controlplane.settings import Settings
from controlplane.store.artifacts import DELETED, Artifacts, keep_newest
from controlplane.store.blobs import BlobStore
from controlplane.store.memory import MemoryStore


def test_keep_newest_drops_the_oldest_beyond_the_maximum() -> None:
    """The newest versions are kept, the older ones returned in order."""
    versions = [{"index": i} for i in (1, 2, 3, 4)]
    kept, dropped = keep_newest(versions, 3)
    assert [v["index"] for v in kept] == [2, 3, 4] and dropped == [{"index": 1}]
    assert keep_newest(versions, 10) == (tuple(versions), [])


def test_the_next_index_follows_the_highest_ever_given() -> None:
    """last_index is the highest of the stored index and every version's."""
    art = Artifact("u", "ns", "upload", "n", versions=({"index": 2}, {"index": 7}), index=5)
    assert art.last_index == 7
    assert dataclasses.replace(art, versions=(), index=9).last_index == 9
    assert Artifact("u", "ns", "upload", "n").last_index == 0


async def test_versions_are_numbered_past_deleted_ones_and_capped() -> None:
    """Deleting a middle version never lets its index be given again."""
    store = Artifacts(MemoryStore(), default_max_versions=2)
    art, _ = await store.add_version("ns", "upload", "img", "b1", 1.0)
    art, _ = await store.add_version("ns", "upload", "img", "b2", 2.0)
    art, dropped = await store.add_version("ns", "upload", "img", "b3", 3.0)
    assert [v["index"] for v in art.versions] == [2, 3] and [d["index"] for d in dropped] == [1]

    def drop_newest(old: Artifact) -> tuple[Artifact, list[dict[str, object]]]:
        return dataclasses.replace(old, versions=old.versions[:-1], index=old.last_index), [
            old.versions[-1]
        ]

    await store.change(art.uuid, drop_newest)
    art, _ = await store.add_version("ns", "upload", "img", "b4", 4.0)
    assert [v["index"] for v in art.versions] == [2, 4]


async def test_a_deleted_artifact_frees_its_name_for_a_new_one() -> None:
    """After deletion the same name makes a new artifact, never a version of the old one."""
    store = Artifacts(MemoryStore())
    old, _ = await store.add_version("ns", "label", "gold", "b1", 1.0)

    def delete(art: Artifact) -> tuple[Artifact, list[dict[str, object]]]:
        return dataclasses.replace(art, state=DELETED, versions=()), list(art.versions)

    changed = await store.change(old.uuid, delete)
    assert changed is not None and changed[1] == list(old.versions)
    assert await store.find("ns", "label", "gold") is None
    new, _ = await store.add_version("ns", "label", "gold", "b2", 2.0)
    assert new.uuid != old.uuid and [v["index"] for v in new.versions] == [1]
    assert (await store.get(old.uuid)) is not None


async def test_a_blob_is_freed_only_without_references(tmp_path: Path) -> None:
    """free refuses a referenced blob; a freed blob loses its bytes and hash index."""
    blobs = BlobStore(MemoryStore(), tmp_path)

    async def data() -> AsyncIterator[bytes]:
        yield b"content"

    blob = await blobs.add(data(), 1.0)
    assert await blobs.reference(blob.uuid) is not None
    assert await blobs.free(blob.uuid) is None
    await blobs.reference(blob.uuid, -1)
    freed = await blobs.free(blob.uuid)
    assert freed is not None and freed.state == "deleted"
    assert not blobs.path(blob.uuid).exists()
    assert await blobs.find(blob.sha512) is None
    assert await blobs.reference(blob.uuid) is None
    again = await blobs.add(data(), 2.0)
    assert again.uuid != blob.uuid


async def test_pending_blobs_are_listed_until_referenced_again(tmp_path: Path) -> None:
    """A released blob still in use is remembered; a new reference forgets it."""
    blobs = BlobStore(MemoryStore(), tmp_path)
    blob = await blobs.add_bytes(b"in use", 1.0)
    await blobs.mark_pending(blob.uuid)
    assert await blobs.pending() == [blob.uuid]
    await blobs.reference(blob.uuid)
    assert await blobs.pending() == []


def test_artifact_and_blob_settings_come_from_the_environment() -> None:
    """MINICLOUD_ARTIFACT_MAX_VERSIONS and MINICLOUD_BLOB_SWEEP_INTERVAL, 3 and 60 by default."""
    assert (Settings().artifact_max_versions, Settings().blob_sweep_interval) == (3, 60.0)
    env = {
        "MINICLOUD_ARTIFACT_MAX_VERSIONS": "5",
        "MINICLOUD_BLOB_SWEEP_INTERVAL": "2.5",
        "MINICLOUD_PLAINTEXT": "1",
    }
    settings = Settings.from_env(env)
    assert (settings.artifact_max_versions, settings.blob_sweep_interval) == (5, 2.5)
