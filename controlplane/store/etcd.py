"""The etcd v3 store adapter: the only module that talks to etcd (and imports its stubs).

It speaks etcd's own gRPC API with grpc.aio and the stubs generated from
etcd's vendored ``rpc.proto`` (protos/etcd_rpc.proto); docs/stores.md says
why this and not a client package. How the port maps onto etcd:

- Every key is stored under ``prefix`` (so several control planes, or tests,
  can share one etcd); the prefix is added on the way in and cut off on the
  way out.
- A store version is etcd's per-key ``version``: 1 on creation, +1 on every
  put, and 0 (absent) again after a delete.
- ``commit`` is one ``Txn``: a ``version`` EQUAL compare for every op with
  an expectation, the puts and deletes as its success branch, nothing on
  failure. A transaction that did not succeed is a ``Conflict``.
- ``scan`` is ``Range`` over [prefix, prefix_end), read in pages of at most
  ``PAGE`` items, every page after the first pinned to the first page's
  revision so the whole scan sees one snapshot (started again, up to
  ``SCAN_ATTEMPTS`` times, if etcd compacts that revision away meanwhile).
- Acknowledged means durable: etcd answers a Txn once a quorum of members
  has written it to its fsynced log (unless a member runs with
  ``--unsafe-no-fsync``, as the tests do).

Coordination (the ``Coordinated`` port) maps onto etcd's own services:

- ``watch`` is one Watch stream per watch, created with no start revision
  (etcd's "now") and entered only once etcd confirmed it, so every commit
  acknowledged after entering is seen. Events come out grouped by their
  ``mod_revision``: one etcd revision is one commit. When the stream breaks
  it is opened again on the next endpoint from the last revision seen + 1
  (progress notifications keep that revision fresh while the prefix is
  quiet); ``WatchLost`` when etcd has compacted that revision away or no
  endpoint answers. Streams ask for a member with a leader ("hasleader"),
  so a member cut off from its cluster ends the stream instead of going
  silent.
- Leases are etcd leases: ``grant`` is LeaseGrant (etcd counts whole
  seconds, and at least its minimum TTL, 2 s by default), ``keep_alive`` one
  LeaseKeepAlive round trip, ``revoke`` LeaseRevoke; a ``Put`` with a lease
  is a put with that lease, and a Txn naming an ended lease is refused whole
  by etcd (``LeaseExpired``).

Several endpoints may be given; calls go to one, and a read that finds it
unreachable moves to the next and tries again (lease calls too: granting,
renewing or revoking twice does no harm). A commit is never retried
here: an unreachable or timed-out Txn may or may not have been applied, so
it fails with ``StoreUnavailable`` and the caller decides.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import grpc
import structlog

from controlplane.store.protocol import (
    Change,
    Conflict,
    Delete,
    Item,
    LeaseExpired,
    Op,
    Put,
    StoreError,
    StoreUnavailable,
    WatchLost,
    check_batch,
    prefix_end,
)
from protos import etcd_kv_pb2 as kv_pb
from protos import etcd_rpc_pb2 as rpc
from protos import etcd_rpc_pb2_grpc as rpc_grpc

log = structlog.get_logger(__name__)
T = TypeVar("T")

# Items read per Range call of a scan.
PAGE = 500
# Times a scan starts again when etcd compacts away the revision it pages on.
SCAN_ATTEMPTS = 3
# Replies as large as a page of big records.
MAX_MESSAGE = 64 * 1024 * 1024
# Codes that mean "this endpoint cannot answer now" (another one may).
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)
# Watch streams only from a member that has a leader (etcd cancels them when it loses it).
_WATCH_METADATA = (("hasleader", "true"),)
# Rounds through every endpoint a broken watch makes before giving up, and the pause between.
WATCH_ROUNDS = 3
WATCH_PAUSE = 0.5


class _Compacted(StoreError):
    """The revision a scan pages on was compacted meanwhile (the scan starts again)."""


@dataclass(frozen=True)
class EtcdTls:
    """TLS to etcd: the CA that signed its certificates, and an optional client certificate."""

    ca: Path | None = None
    cert: Path | None = None
    key: Path | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """Channel credentials from the files (the system's CAs when no CA file is given)."""
        if (self.cert is None) != (self.key is None):
            raise StoreError("an etcd client certificate needs both its cert and key files")
        try:
            return grpc.ssl_channel_credentials(
                root_certificates=self.ca.read_bytes() if self.ca else None,
                private_key=self.key.read_bytes() if self.key else None,
                certificate_chain=self.cert.read_bytes() if self.cert else None,
            )
        except OSError as exc:
            raise StoreError(f"cannot read the etcd TLS files: {exc}") from exc


class EtcdStore:
    """A versioned store in one key prefix of an etcd cluster."""

    def __init__(
        self,
        endpoints: Sequence[str],
        prefix: bytes,
        *,
        tls: EtcdTls | None = None,
        timeout: float = 10.0,
    ) -> None:
        """Channels to each endpoint ("host:port"); nothing is dialled until the first call."""
        if not endpoints:
            raise StoreError("etcd needs at least one endpoint")
        self.endpoints = tuple(endpoints)
        self.prefix = prefix
        self.timeout = timeout
        options = [
            ("grpc.max_receive_message_length", MAX_MESSAGE),
            ("grpc.max_send_message_length", MAX_MESSAGE),
        ]
        credentials = tls.credentials() if tls is not None else None
        self._channels = [
            grpc.aio.secure_channel(target, credentials, options)
            if credentials is not None
            else grpc.aio.insecure_channel(target, options)
            for target in self.endpoints
        ]
        self._kv = [rpc_grpc.KVStub(channel) for channel in self._channels]
        self._watch = [rpc_grpc.WatchStub(channel) for channel in self._channels]
        self._lease = [rpc_grpc.LeaseStub(channel) for channel in self._channels]
        self._current = 0

    async def get(self, key: bytes) -> Item | None:
        reply = await self._read(rpc.RangeRequest(key=self.prefix + key))
        if not reply.kvs:
            return None
        kv = reply.kvs[0]
        return Item(key, kv.value, kv.version)

    async def scan(
        self,
        prefix: bytes,
        *,
        reverse: bool = False,
        limit: int | None = None,
        after: bytes | None = None,
    ) -> list[Item]:
        for _ in range(SCAN_ATTEMPTS - 1):
            try:
                return await self._scan(prefix, reverse, limit, after)
            except _Compacted:
                continue  # the snapshot's revision went while paging: start again
        return await self._scan(prefix, reverse, limit, after)

    async def _scan(
        self, prefix: bytes, reverse: bool, limit: int | None, after: bytes | None
    ) -> list[Item]:
        """One scan, paging on the first page's revision (_Compacted if that revision goes)."""
        start = self.prefix + prefix
        end = prefix_end(start) or b"\0"  # "\0": every key from start on
        if after is not None and not reverse:
            start = max(start, self.prefix + after + b"\0")  # the next key after it
        elif after is not None:
            bound = self.prefix + after  # range ends are exclusive: after itself is left out
            end = bound if end == b"\0" else min(end, bound)
        if end != b"\0" and start >= end:
            return []
        found: list[Item] = []
        revision = 0
        while limit is None or len(found) < limit:
            want = PAGE if limit is None else min(PAGE, limit - len(found))
            request = rpc.RangeRequest(
                key=start or b"\0",
                range_end=end,
                limit=want,
                revision=revision,
                # Key order ascending is etcd's natural order (NONE is cheaper than
                # ASCEND); descending makes etcd read the whole range and sort it.
                sort_order=rpc.RangeRequest.DESCEND if reverse else rpc.RangeRequest.NONE,
                sort_target=rpc.RangeRequest.KEY,
            )
            reply = await self._read(request)
            revision = reply.header.revision
            cut = len(self.prefix)
            found += [Item(kv.key[cut:], kv.value, kv.version) for kv in reply.kvs]
            if not reply.more or len(reply.kvs) < want or not reply.kvs:
                break
            last = reply.kvs[-1].key
            if reverse:
                end = last
            else:
                start = last + b"\0"
        return found

    async def commit(self, ops: Sequence[Op]) -> None:
        check_batch(ops)
        if not ops:
            return
        request = rpc.TxnRequest(
            compare=[
                rpc.Compare(
                    result=rpc.Compare.EQUAL,
                    target=rpc.Compare.VERSION,
                    key=self.prefix + op.key,
                    version=op.expect,
                )
                for op in ops
                if op.expect is not None
            ],
            success=[self._request_op(op) for op in ops],
        )
        index = self._current
        try:
            reply = await self._kv[index].Txn(request, timeout=self.timeout)
        except grpc.aio.AioRpcError as exc:
            self._failed(index, exc)
            if _lease_not_found(exc):
                raise LeaseExpired(f"a put names a lease that has ended: {exc.details()}") from exc
            raise _error(exc, f"etcd {self.endpoints[index]} Txn") from exc
        if not reply.succeeded:
            expected = [op.key for op in ops if op.expect is not None]
            raise Conflict(f"a key is not at its expected version (one of {expected[:4]!r})")

    def watch(self, prefix: bytes) -> EtcdWatch:
        """Every change under prefix committed after entering (see the module docstring)."""
        return EtcdWatch(self, prefix)

    async def grant(self, ttl: float) -> int:
        """A new etcd lease of ttl seconds (rounded up to whole seconds)."""
        request = rpc.LeaseGrantRequest(TTL=max(1, math.ceil(ttl)))
        reply = await self._lease_call(
            "LeaseGrant", lambda i: self._lease[i].LeaseGrant(request, timeout=self.timeout)
        )
        if reply.error:
            raise StoreError(f"etcd LeaseGrant: {reply.error}")
        return int(reply.ID)

    async def keep_alive(self, lease: int) -> None:
        """Renew the lease for its ttl (LeaseExpired when it has ended)."""

        async def renew(index: int) -> rpc.LeaseKeepAliveResponse:
            call = self._lease[index].LeaseKeepAlive(timeout=self.timeout)
            try:
                await call.write(rpc.LeaseKeepAliveRequest(ID=lease))
                await call.done_writing()
                reply = await call.read()
            finally:
                call.cancel()
            if reply is grpc.aio.EOF:
                raise StoreUnavailable("etcd LeaseKeepAlive ended without an answer")
            assert isinstance(reply, rpc.LeaseKeepAliveResponse)
            return reply

        reply = await self._lease_call("LeaseKeepAlive", renew)
        if reply.TTL <= 0:
            raise LeaseExpired(f"lease {lease:x} has ended")

    async def revoke(self, lease: int) -> None:
        """End the lease now (etcd deletes its keys); nothing if it had ended already."""
        request = rpc.LeaseRevokeRequest(ID=lease)
        try:
            await self._lease_call(
                "LeaseRevoke", lambda i: self._lease[i].LeaseRevoke(request, timeout=self.timeout)
            )
        except LeaseExpired:
            return

    async def _lease_call(self, what: str, call: Callable[[int], Awaitable[T]]) -> T:
        """A lease call on the current endpoint, moving on while endpoints are unreachable."""
        last: grpc.aio.AioRpcError | None = None
        for _ in self.endpoints:
            index = self._current
            try:
                return await call(index)
            except grpc.aio.AioRpcError as exc:
                if _lease_not_found(exc):
                    raise LeaseExpired(f"etcd {what}: {exc.details()}") from exc
                if exc.code() not in _UNREACHABLE:
                    raise _error(exc, f"etcd {self.endpoints[index]} {what}") from exc
                last = exc
                self._failed(index, exc)
        assert last is not None
        raise _error(last, f"etcd {what} (tried {', '.join(self.endpoints)})") from last

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    def _request_op(self, op: Op) -> rpc.RequestOp:
        if isinstance(op, Put):
            return rpc.RequestOp(
                request_put=rpc.PutRequest(key=self.prefix + op.key, value=op.value, lease=op.lease)
            )
        if isinstance(op, Delete):
            return rpc.RequestOp(
                request_delete_range=rpc.DeleteRangeRequest(key=self.prefix + op.key)
            )
        raise StoreError(f"not a store operation: {op!r}")

    async def _read(self, request: rpc.RangeRequest) -> rpc.RangeResponse:
        """Range on the current endpoint, moving on to the next ones while they are unreachable."""
        last: grpc.aio.AioRpcError | None = None
        for _ in self.endpoints:
            index = self._current
            try:
                reply: rpc.RangeResponse = await self._kv[index].Range(
                    request, timeout=self.timeout
                )
                return reply
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.OUT_OF_RANGE and request.revision:
                    raise _Compacted(f"etcd revision {request.revision} was compacted") from exc
                if exc.code() not in _UNREACHABLE:
                    raise _error(exc, f"etcd {self.endpoints[index]} Range") from exc
                last = exc
                self._failed(index, exc)
        assert last is not None
        raise _error(last, f"etcd Range (tried {', '.join(self.endpoints)})") from last

    def _failed(self, index: int, exc: grpc.aio.AioRpcError) -> None:
        """After endpoint index proved unreachable, the next call goes to the next one."""
        if exc.code() in _UNREACHABLE and self._current == index:
            self._current = (index + 1) % len(self.endpoints)


class EtcdWatch:
    """One watch on a key prefix over an etcd Watch stream (see the module docstring)."""

    def __init__(self, store: EtcdStore, prefix: bytes) -> None:
        self.store = store
        self.prefix = prefix
        self._key = store.prefix + prefix
        self._end = prefix_end(self._key) or b"\0"
        self._call: grpc.aio.StreamStreamCall[rpc.WatchRequest, rpc.WatchResponse] | None = None
        # The last revision whose changes were all handed out (or had none under the prefix).
        self._seen = 0

    async def __aenter__(self) -> AsyncIterator[list[Change]]:
        """Open the stream and wait until etcd has created the watch."""
        await self._open_somewhere(0)
        return self._changes()

    async def __aexit__(self, *exc: object) -> None:
        self._cancel()

    async def _changes(self) -> AsyncIterator[list[Change]]:
        """One list per etcd revision, moving to another endpoint when the stream breaks."""
        while True:
            assert self._call is not None
            try:
                reply = await self._call.read()
            except grpc.aio.AioRpcError as exc:
                log.info("etcd watch broke", code=exc.code().name, revision=self._seen)
                await self._reopen()
                continue
            if reply is grpc.aio.EOF:
                log.info("etcd watch ended by the server", revision=self._seen)
                await self._reopen()
                continue
            assert isinstance(reply, rpc.WatchResponse)
            if reply.compact_revision:
                self._cancel()
                raise WatchLost(
                    f"etcd compacted revision {self._seen + 1} away "
                    f"(oldest kept: {reply.compact_revision})"
                )
            if reply.canceled:
                log.info("etcd cancelled the watch", reason=reply.cancel_reason)
                await self._reopen()
                continue
            if not reply.events:
                # A progress notification: nothing under the prefix up to that revision.
                self._seen = max(self._seen, reply.header.revision)
                continue
            for batch in self._by_revision(reply.events):
                yield batch

    def _by_revision(self, events: Sequence[kv_pb.Event]) -> list[list[Change]]:
        """The events cut into one list per revision (one commit), recording the last one."""
        batches: list[list[Change]] = []
        revision = 0
        cut = len(self.store.prefix)
        for event in events:
            kv = event.kv
            if kv.mod_revision <= self._seen:
                continue  # already handed out before the stream was opened again
            if kv.mod_revision != revision:
                batches.append([])
                revision = kv.mod_revision
            key = kv.key[cut:]
            item = None if event.type == kv_pb.Event.DELETE else Item(key, kv.value, kv.version)
            batches[-1].append(Change(key, item))
        self._seen = max(self._seen, revision)
        return batches

    async def _reopen(self) -> None:
        """Open the watch again from the revision after the last one seen (else WatchLost)."""
        self._cancel()
        self.store._current = (self.store._current + 1) % len(self.store.endpoints)
        for attempt in range(WATCH_ROUNDS):
            try:
                await self._open_somewhere(self._seen + 1)
                return
            except StoreUnavailable as exc:
                last = exc
                if attempt + 1 < WATCH_ROUNDS:
                    await asyncio.sleep(WATCH_PAUSE)
        raise WatchLost(f"no etcd endpoint resumes the watch: {last}") from last

    async def _open_somewhere(self, start: int) -> None:
        """A created watch from start (0: now) on the first endpoint that answers."""
        store = self.store
        failure = ""
        for _ in store.endpoints:
            index = store._current
            try:
                await self._open(index, start)
                return
            except grpc.aio.AioRpcError as exc:
                self._cancel()
                if exc.code() not in _UNREACHABLE:
                    raise _error(exc, f"etcd {store.endpoints[index]} Watch") from exc
                failure = f"{store.endpoints[index]}: {exc.code().name} {exc.details()}"
            except (TimeoutError, _NotCreated) as exc:
                self._cancel()
                failure = f"{store.endpoints[index]}: {exc or 'no answer in time'}"
            store._current = (index + 1) % len(store.endpoints)
        raise StoreUnavailable(f"etcd Watch (tried {', '.join(store.endpoints)}): {failure}")

    async def _open(self, index: int, start: int) -> None:
        """Create the watch on endpoint index and wait for etcd to confirm it."""
        call = self.store._watch[index].Watch(metadata=_WATCH_METADATA)
        self._call = call
        create = rpc.WatchCreateRequest(
            key=self._key, range_end=self._end, start_revision=start, progress_notify=True
        )
        await call.write(rpc.WatchRequest(create_request=create))
        reply = await asyncio.wait_for(call.read(), self.store.timeout)
        if reply is grpc.aio.EOF or not isinstance(reply, rpc.WatchResponse):
            raise _NotCreated("the stream ended before the watch was created")
        if not reply.created:
            raise _NotCreated("etcd answered the create with something else")
        if reply.compact_revision or (reply.canceled and start):
            raise WatchLost(
                f"etcd compacted revision {start} away (oldest kept: {reply.compact_revision})"
            )
        if reply.canceled:
            raise _NotCreated(f"etcd refused the watch: {reply.cancel_reason}")
        if not start:
            self._seen = reply.header.revision  # etcd's "now": changes after it come

    def _cancel(self) -> None:
        if self._call is not None:
            self._call.cancel()
            self._call = None


class _NotCreated(Exception):
    """A Watch stream that did not confirm its watch (another endpoint may)."""


def _lease_not_found(exc: grpc.aio.AioRpcError) -> bool:
    """Whether etcd refused a call because the lease it names does not exist (any more)."""
    return exc.code() == grpc.StatusCode.NOT_FOUND and "lease" in (exc.details() or "")


def _error(exc: grpc.aio.AioRpcError, what: str) -> StoreError:
    """The store error for a failed etcd call."""
    message = f"{what}: {exc.code().name} {exc.details()}"
    if exc.code() in _UNREACHABLE:
        return StoreUnavailable(message)
    return StoreError(message)
