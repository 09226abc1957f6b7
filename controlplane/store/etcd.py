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

Several endpoints may be given; calls go to one, and a read that finds it
unreachable moves to the next and tries again. A commit is never retried
here: an unreachable or timed-out Txn may or may not have been applied, so
it fails with ``StoreUnavailable`` and the caller decides.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from controlplane.store.protocol import (
    Conflict,
    Delete,
    Item,
    Op,
    Put,
    StoreError,
    StoreUnavailable,
    check_batch,
    prefix_end,
)
from protos import etcd_rpc_pb2 as rpc
from protos import etcd_rpc_pb2_grpc as rpc_grpc

# Items read per Range call of a scan.
PAGE = 500
# Times a scan starts again when etcd compacts away the revision it pages on.
SCAN_ATTEMPTS = 3
# Replies as large as a page of big records.
MAX_MESSAGE = 64 * 1024 * 1024
# Codes that mean "this endpoint cannot answer now" (another one may).
_UNREACHABLE = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


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
            raise _error(exc, f"etcd {self.endpoints[index]} Txn") from exc
        if not reply.succeeded:
            expected = [op.key for op in ops if op.expect is not None]
            raise Conflict(f"a key is not at its expected version (one of {expected[:4]!r})")

    async def close(self) -> None:
        for channel in self._channels:
            await channel.close()

    def _request_op(self, op: Op) -> rpc.RequestOp:
        if isinstance(op, Put):
            return rpc.RequestOp(
                request_put=rpc.PutRequest(key=self.prefix + op.key, value=op.value)
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


def _error(exc: grpc.aio.AioRpcError, what: str) -> StoreError:
    """The store error for a failed etcd call."""
    message = f"{what}: {exc.code().name} {exc.details()}"
    if exc.code() in _UNREACHABLE:
        return StoreUnavailable(message)
    return StoreError(message)
