"""Caching an image from a URL as an upload artifact: answered at once, fetched in the background.

``cache`` checks the URL (http or https only: anything else is
INVALID_ARGUMENT, nothing stored) and answers the artifact ``upload:NAME``
(NAME defaults to one made from the URL's last path segment) at once: a new one in state
``initial``, or the existing one, its ``fetch`` saying ``fetching``. A request
for the URL the artifact is already fetching starts nothing more (a URL is
fetched once at a time); another URL while one is fetching is
FAILED_PRECONDITION.

The fetch (``controlplane.urlfetch``, every address checked once resolved,
redirects too) runs as a background task, bounded by ``timeout`` seconds and
the policy's size limit. Its bytes go straight into the blob store, hashed as
they come, so content already stored is not stored twice (the sha512
decides). Progress is written to the artifact's ``fetch`` (``fetched`` of
``size`` bytes) at most once a ``progress_interval``, and as ``status``
events every tenth of an announced size.

Success: a new version holding the blob (none when the newest version already
holds that content), state ``created``. Failure or refusal: state ``error``,
``error`` and a ``fetch failed: ...`` event saying why; the versions it had
are kept, and the blob store holds nothing of the failed fetch. A fetch cut
short by the control plane stopping is marked failed when it starts again.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import re
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from urllib.parse import unquote, urlsplit

import structlog

from common.tasks import Tasks
from controlplane.errors import FailedPrecondition, InvalidArgument
from controlplane.model import Artifact, Blob, Event, JsonDict
from controlplane.services.artifacts import ERROR, INITIAL, ArtifactService, check_name
from controlplane.services.namespaces import SYSTEM
from controlplane.store.artifacts import DELETED, with_version
from controlplane.store.networks import NetworkRecords
from controlplane.store.protocol import Op
from controlplane.store.records import Records
from controlplane.urlfetch import FetchError, FetchPolicy, IPNetwork, Response, check_url, open_url
from controlplane.validation import NAME_RE

log = structlog.get_logger(__name__)

FETCHING = "fetching"
DONE = "done"
FAILED = "failed"
CREATED = "created"
ClusterNetworks = Callable[[], Awaitable[Sequence[IPNetwork]]]


async def no_networks() -> Sequence[IPNetwork]:
    """A cluster with no networks of its own."""
    return ()


def cluster_networks(floating: str, networks: NetworkRecords, records: Records) -> ClusterNetworks:
    """The cluster's own networks, read at each fetch: the floating pool, every live
    virtual network's netblock and every node's address."""

    async def read() -> Sequence[IPNetwork]:
        found: list[IPNetwork] = []
        candidates = [floating]
        candidates += [n.netblock for n in await networks.list_networks() if n.state != DELETED]
        candidates += [node.address for node in await records.list_nodes() if node.address]
        for value in candidates:
            try:
                found.append(ipaddress.ip_network(value, strict=False))
            except ValueError:
                continue
        return found

    return read


def name_from_url(url: str) -> str:
    """The artifact name a URL gives: its last path segment, else its host, made a valid
    name (other characters become "-"); "image" when neither gives one."""
    parts = urlsplit(url)
    for candidate in (unquote(parts.path.rstrip("/").rpartition("/")[2]), parts.hostname or ""):
        cleaned = re.sub(r"[^A-Za-z0-9_.-]+", "-", candidate)
        cleaned = re.sub(r"^[^A-Za-z0-9]+", "", cleaned)[:63].rstrip("-")
        if NAME_RE.match(cleaned):
            return cleaned
    return "image"


class UrlCache:
    """Artifacts cached from http(s) URLs."""

    def __init__(
        self,
        artifacts: ArtifactService,
        policy: FetchPolicy,
        timeout: float,
        tasks: Tasks,
        plane: str,
        cluster: ClusterNetworks = no_networks,
        progress_interval: float = 1.0,
    ) -> None:
        self.artifacts = artifacts
        self.policy = policy
        self.timeout = timeout
        self.tasks = tasks
        self.plane = plane
        self.cluster = cluster
        self.progress_interval = progress_interval

    @property
    def _event(self) -> Callable[..., Event]:
        return self.artifacts.event

    def _ops(self, events: list[Event]) -> Sequence[Op]:
        return self.artifacts.records.event_ops(events)

    async def cache(
        self, namespace: str, url: str, name: str = "", shared: bool = False
    ) -> Artifact:
        """The artifact upload:NAME, its fetch from url started (or already running)."""
        try:
            check_url(url)
        except ValueError as exc:
            raise InvalidArgument(str(exc)) from None
        name = name or name_from_url(url)
        check_name(name)
        if shared and namespace != SYSTEM:
            raise FailedPrecondition(
                f"only artifacts of the system namespace can be shared, not {namespace}'s"
            )
        now = self.artifacts.clock()
        fetch: JsonDict = {
            "url": url,
            "state": FETCHING,
            "fetched": 0,
            "size": 0,
            "plane": self.plane,
            "started_at": now,
        }
        fresh = Artifact(
            uuid=str(uuidlib.uuid4()),
            namespace=namespace,
            type="upload",
            name=name,
            state=INITIAL,
            source_url=url,
            shared=shared,
            fetch=fetch,
        )

        def edit(old: Artifact) -> Artifact | None:
            if old.fetch.get("state") == FETCHING:
                if old.fetch.get("url") == url:
                    return None
                raise FailedPrecondition(
                    f"artifact upload:{name} is being fetched from {old.fetch.get('url')!r}; "
                    "cache another URL into it once that fetch has ended"
                )
            state = old.state
            if state == ERROR:
                # Fetched again: initial until this fetch decides (created with versions).
                state = CREATED if old.versions else INITIAL
            return dataclasses.replace(
                old,
                fetch=fetch,
                state=state,
                error="",
                shared=old.shared or shared,
                index=old.last_index,
            )

        def events(old: Artifact | None, new: Artifact, dropped: list[JsonDict]) -> Sequence[Op]:
            out = []
            if old is None:
                out.append(self._event(new.uuid, "artifact created", type=new.type, name=name))
            out.append(self._event(new.uuid, "fetch requested", url=url))
            if new.shared and not (old is not None and old.shared):
                out.append(self._event(new.uuid, "artifact shared"))
            return self._ops(out)

        art, started = await self.artifacts.artifacts.claim(fresh, edit, events)
        if started:
            log.info("fetch requested", artifact=art.uuid, namespace=namespace, name=name)
            self.tasks.spawn(self._fetch(art.uuid, url), name=f"fetch {art.uuid}")
        return art

    async def recover(self) -> int:
        """Mark failed the fetches this control plane was running when it stopped."""
        count = 0
        for art in await self.artifacts.artifacts.list_everywhere():
            if art.fetch.get("state") == FETCHING and art.fetch.get("plane") == self.plane:
                await self._failed(
                    art.uuid, "interrupted: the control plane stopped during the fetch"
                )
                count += 1
        return count

    async def _fetch(self, uuid: str, url: str) -> None:
        bound = log.bind(artifact=uuid)
        try:
            async with asyncio.timeout(self.timeout):
                cluster = await self.cluster()
                async with open_url(url, self.policy, cluster) as response:
                    await self._progress(uuid, 0, response.size or 0, started=True)
                    blob = await self.artifacts.blobs.add(
                        self._counted(uuid, response), self.artifacts.clock()
                    )
        except FetchError as exc:
            bound.info("fetch failed", reason=str(exc))
            await self._failed(uuid, str(exc))
            return
        except TimeoutError:
            bound.info("fetch timed out", timeout=self.timeout)
            await self._failed(uuid, f"timed out after {self.timeout:g} s")
            return
        except Exception as exc:
            bound.exception("fetch failed unexpectedly")
            await self._failed(uuid, f"failed: {type(exc).__name__}: {exc}"[:500])
            return
        await self._finish(uuid, blob)

    async def _counted(self, uuid: str, response: Response) -> AsyncIterator[bytes]:
        size = response.size or 0
        done, shown, tenth = 0, time.monotonic(), 0
        async for chunk in response.chunks:
            done += len(chunk)
            yield chunk
            now = time.monotonic()
            reached = 10 * done // size if size else 0
            if now - shown >= self.progress_interval or reached > tenth:
                shown = now
                await self._progress(
                    uuid, done, size, percent=10 * reached if reached > tenth else 0
                )
                tenth = max(tenth, reached)

    async def _progress(
        self, uuid: str, done: int, size: int, started: bool = False, percent: int = 0
    ) -> None:
        def edit(old: Artifact) -> tuple[Artifact, list[JsonDict]]:
            if old.fetch.get("state") != FETCHING:
                return old, []
            fetch = {**old.fetch, "fetched": done, "size": size}
            return dataclasses.replace(old, fetch=fetch, index=old.last_index), []

        def events(old: Artifact | None, new: Artifact, removed: list[JsonDict]) -> Sequence[Op]:
            if started:
                return self._ops([self._event(uuid, "fetching", "status", size=size)])
            if percent and percent < 100:
                message = f"fetched {percent}% ({done} of {size} bytes)"
                return self._ops([self._event(uuid, message, "status", fetched=done)])
            return ()

        await self.artifacts.artifacts.change(uuid, edit, events)

    async def _finish(self, uuid: str, blob: Blob) -> None:
        now = self.artifacts.clock()
        await self.artifacts.blobs.reference(blob.uuid, "a new artifact version")
        keep = self.artifacts.artifacts.max_versions
        outcome = {"added": False}

        def edit(old: Artifact) -> tuple[Artifact, list[JsonDict]]:
            outcome["added"] = False
            if old.state == DELETED or old.fetch.get("state") != FETCHING:
                return old, []
            fetch = {**old.fetch, "state": DONE, "fetched": blob.size, "size": blob.size}
            if old.blob_uuid == blob.uuid:
                new, dropped = dataclasses.replace(old, index=old.last_index), list[JsonDict]()
            else:
                new, dropped = with_version(old, blob.uuid, now, keep(old), str(old.fetch["url"]))
                outcome["added"] = True
            return dataclasses.replace(new, state=CREATED, error="", fetch=fetch), dropped

        def events(old: Artifact | None, new: Artifact, dropped: list[JsonDict]) -> Sequence[Op]:
            details = {"blob_uuid": blob.uuid, "sha512": blob.sha512, "size": blob.size}
            if old is not None and new.versions == old.versions:
                message = f"fetch complete: version {new.last_index} already holds this content"
                out = [self._event(uuid, message, **details)]
            else:
                index = new.last_index
                out = [self._event(uuid, f"fetch complete: version {index} added", **details)]
                out += self.artifacts.dropped_events(new, dropped)
            return self._ops(out)

        changed = await self.artifacts.artifacts.change(uuid, edit, events)
        if not outcome["added"]:
            # Deleted meanwhile, or the newest version already held it: no new reference.
            await self.artifacts.blobs.release(blob.uuid, "an artifact version went")
        if changed is not None:
            await self.artifacts.release(changed[1])
            log.info("fetch complete", artifact=uuid, blob=blob.uuid, size=blob.size)

    async def _failed(self, uuid: str, reason: str) -> None:
        def edit(old: Artifact) -> tuple[Artifact, list[JsonDict]]:
            if old.state == DELETED or old.fetch.get("state") != FETCHING:
                return old, []
            fetch = {**old.fetch, "state": FAILED, "error": reason}
            new = dataclasses.replace(
                old, state=ERROR, error=reason, fetch=fetch, index=old.last_index
            )
            return new, []

        def events(old: Artifact | None, new: Artifact, removed: list[JsonDict]) -> Sequence[Op]:
            url = new.fetch.get("url", "")
            return self._ops([self._event(uuid, f"fetch failed: {reason}", url=url, error=reason)])

        try:
            await self.artifacts.artifacts.change(uuid, edit, events)
        except Exception:
            log.exception("could not record a failed fetch", artifact=uuid)
