"""A small synchronous client of the InstanceService, used by the CLI and tools.

    from client.api import Client
    c = Client("127.0.0.1:13100", namespace="system", key="...", ca_file="ca/ca.pem")
    inst = c.create({"name": "demo", "cpus": 1, "memory": 512,
                     "disks": [{"size_gb": 2, "base": "debian:11"}]})
    c.wait(inst["uuid"], lambda i: i["state"] in ("created", "error"))

Results are plain dicts (protobuf JSON with the proto field names). The client
trades its namespace and key for a token on first use and again whenever the
control plane says the token is no longer good (it expired, say). The channel
is TLS, checked against the cluster's CA certificate (``ca_file``; the
system's roots when empty), unless ``plaintext`` is asked for. The target may
be several control-plane addresses, comma-separated: the client then moves to
the next when one fails (``Client`` says which calls are sent again).
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from common import addresslist
from common.addresslist import AddressList
from protos import (
    agent_pb2,
    agent_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    consoles_pb2,
    consoles_pb2_grpc,
    instances_pb2,
    instances_pb2_grpc,
    metadata_pb2,
    metadata_pb2_grpc,
    networks_pb2,
    networks_pb2_grpc,
    nodes_pb2,
    nodes_pb2_grpc,
)

JsonDict = dict[str, Any]
T = TypeVar("T")
# Seconds an address may take to connect before a call moves on to the next one.
CONNECT_TIMEOUT = 5.0
# Longest wait between gRPC's attempts to reconnect to an address that was down, with
# several addresses (gRPC's own default grows to 120 s).
RECONNECT_CAP = 5.0
# A Watch stream that has been open this long, or has delivered a message, has settled:
# when it breaks, every address may be tried again.
WATCH_SETTLED = 5.0
# How long a broken console session keeps trying to attach again.
REATTACH_FOR = 10.0
# Instances per List page the client asks for (the control plane's default and at most 1000).
PAGE_SIZE = 500

POWER_METHODS = {
    "on": "PowerOn",
    "off": "PowerOff",
    "pause": "Pause",
    "unpause": "Unpause",
    "soft-reboot": "SoftReboot",
    "hard-reboot": "HardReboot",
}


# A snapshot copies whole disks: it may take much longer than other calls.
SNAPSHOT_TIMEOUT = 1800.0


def to_dict(message: Message) -> JsonDict:
    """A message as a dict, defaults included, with proto field names."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class Unreachable(grpc.RpcError):
    """No control plane of the list could be reached (nothing was sent): UNAVAILABLE."""

    def __init__(self, addresses: tuple[str, ...]) -> None:
        super().__init__()
        self.addresses = addresses
        self._details = f"cannot reach a control plane (tried {', '.join(addresses)})"

    def code(self) -> grpc.StatusCode:
        return grpc.StatusCode.UNAVAILABLE

    def details(self) -> str:
        return self._details

    def __str__(self) -> str:
        return f"UNAVAILABLE: {self._details}"


class Connection:
    """One channel to one control-plane address, with a stub per service."""

    def __init__(self, target: str, creds: grpc.ChannelCredentials | None, failover: bool) -> None:
        options: list[tuple[str, Any]] = [
            ("grpc.max_receive_message_length", 64 * 1024 * 1024),
            ("grpc.max_send_message_length", 64 * 1024 * 1024),
        ]
        if failover:
            # An address that was down is tried again within seconds of coming back.
            options.append(("grpc.max_reconnect_backoff_ms", int(RECONNECT_CAP * 1000)))
        self.target = target
        self.watched = False
        self.state: grpc.ChannelConnectivity | None = None
        self.changed = threading.Condition()
        if creds is None:
            self.channel = grpc.insecure_channel(target, options=options)
        else:
            self.channel = grpc.secure_channel(target, creds, options=options)
        self.stub = instances_pb2_grpc.InstanceServiceStub(self.channel)
        self.agent = agent_pb2_grpc.AgentServiceStub(self.channel)
        self.blobs = blobs_pb2_grpc.BlobServiceStub(self.channel)
        self.artifacts = artifacts_pb2_grpc.ArtifactServiceStub(self.channel)
        self.consoles = consoles_pb2_grpc.ConsoleServiceStub(self.channel)
        self.auth = auth_pb2_grpc.AuthServiceStub(self.channel)
        self.namespaces = auth_pb2_grpc.NamespaceServiceStub(self.channel)
        self.meta = metadata_pb2_grpc.MetadataServiceStub(self.channel)
        self.nets = networks_pb2_grpc.NetworkServiceStub(self.channel)
        self.ifaces = networks_pb2_grpc.InterfaceServiceStub(self.channel)
        self.node_admin = nodes_pb2_grpc.NodeAdminServiceStub(self.channel)

    def connects(self, timeout: float) -> bool:
        """Whether the channel is (or gets) connected within timeout seconds: False as soon
        as a connection attempt fails. A call is sent only over a connected channel.

        The channel's state is followed by one subscription (made on first use), so a
        connected channel answers at once.
        """
        with self.changed:
            if self._ready():
                return True
        if not self.watched:
            self.watched = True
            self.channel.subscribe(self._seen, try_to_connect=True)
        else:
            # Ask it to connect again (gRPC connects on a subscription that says so).
            self.channel.subscribe(_ignore, try_to_connect=True)
            self.channel.unsubscribe(_ignore)
        failed = (grpc.ChannelConnectivity.TRANSIENT_FAILURE, grpc.ChannelConnectivity.SHUTDOWN)
        with self.changed:
            self.changed.wait_for(lambda: self._ready() or self.state in failed, timeout)
            return self._ready()

    def _ready(self) -> bool:
        return self.state == grpc.ChannelConnectivity.READY

    def _seen(self, state: grpc.ChannelConnectivity) -> None:
        with self.changed:
            self.state = state
            self.changed.notify_all()

    def close(self) -> None:
        """Close the channel (once gRPC's thread following its state has ended: it fails
        when the channel closes under it)."""
        if self.watched:
            self.channel.unsubscribe(self._seen)
            state = getattr(self.channel, "_connectivity_state", None)
            deadline = time.monotonic() + 1.0
            while getattr(state, "polling", False) and time.monotonic() < deadline:
                time.sleep(0.02)
        self.channel.close()


def _ignore(state: grpc.ChannelConnectivity) -> None:
    """A subscriber that only asks a channel to connect."""


class Client:
    """Channels to a control plane (one of a list of addresses), calls made in one namespace.

    ``target`` is one address or several, comma-separated (or a list). With one
    the client is a plain gRPC client. With several it starts at the first and
    moves to the next when a call fails with UNAVAILABLE, trying each address
    at most once per call (with a short growing wait between moves) before the
    last error goes to the caller:

    * reads (Get, List, GetEvents, ...) and ``create`` (it always carries a client
      request id, so a retried create returns the instance the first try made)
      are retried on the next address after any UNAVAILABLE;
    * every other call moves on only when it was not sent: a call is sent only
      once its address is connected, and an address that does not connect within
      ``connect_timeout`` is skipped; an UNAVAILABLE after sending goes to the
      caller, since the call may have been done;
    * streams: ``watch`` subscribes again on the next address (see there),
      ``execute_stream`` waits for its operation through the next address once
      it was queued, ``download_blob`` resumes at the byte it had reached,
      ``attach`` attaches again (``ConsoleOutput``); uploads are sent once, over a
      connected address.

    TLS (``ca_file``, or ``plaintext``) applies to every address.
    """

    def __init__(
        self,
        target: str | list[str] | tuple[str, ...],
        namespace: str = "system",
        key: str = "",
        timeout: float = 300,
        act_as: str = "",
        ca_file: str = "",
        plaintext: bool = False,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.addresses = AddressList(target if isinstance(target, str) else tuple(target))
        if plaintext:
            self._creds: grpc.ChannelCredentials | None = None
        else:
            with open(ca_file, "rb") if ca_file else contextlib.nullcontext() as found:
                roots = found.read() if found is not None else None
            self._creds = grpc.ssl_channel_credentials(root_certificates=roots)
        self._connections: dict[str, Connection] = {}
        self.namespace = namespace
        self.key = key
        self.act_as = act_as
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.sleep: Callable[[float], None] = time.sleep
        self._token = ""
        self._token_expires = 0.0
        self._connection()  # the first address's channel, as before (it connects lazily)

    def _connection(self, address: str = "") -> Connection:
        """The connection to address (the current one when empty), made on first use."""
        address = address or self.addresses.current
        found = self._connections.get(address)
        if found is None:
            found = Connection(address, self._creds, not self.addresses.single)
            self._connections[address] = found
        return found

    # The current address's channel and stubs (for callers that use them directly).
    @property
    def channel(self) -> grpc.Channel:
        return self._connection().channel

    @property
    def stub(self) -> instances_pb2_grpc.InstanceServiceStub:
        return self._connection().stub

    @property
    def agent(self) -> agent_pb2_grpc.AgentServiceStub:
        return self._connection().agent

    @property
    def blobs(self) -> blobs_pb2_grpc.BlobServiceStub:
        return self._connection().blobs

    @property
    def auth(self) -> auth_pb2_grpc.AuthServiceStub:
        return self._connection().auth

    def _metadata_for(self, conn: Connection) -> tuple[tuple[str, str], ...]:
        """Call metadata with a current token (minted over conn when missing or about to
        expire)."""
        if not self._token or time.monotonic() > self._token_expires - 30:
            reply = conn.auth.Token(
                auth_pb2.TokenRequest(namespace=self.namespace, key=self.key),
                timeout=self.timeout,
            )
            self._token = reply.access_token
            self._token_expires = time.monotonic() + reply.expires_in
        found: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {self._token}"),)
        if self.act_as:
            found += (("x-namespace", self.act_as),)
        return found

    @property
    def metadata(self) -> tuple[tuple[str, str], ...]:
        """Call metadata with a current token (minted when missing or about to expire)."""
        if self.addresses.single:
            return self._metadata_for(self._connection())
        # Minting a token is a read: any address will do.
        return self._over_any(self._metadata_for)

    def close(self) -> None:
        """Close every channel."""
        for conn in self._connections.values():
            conn.close()

    def channel_ready(self, timeout: float) -> None:
        """Wait until the control plane is reachable (grpc.FutureTimeoutError if not; with
        several addresses, until one of them is)."""
        if self.addresses.single:
            grpc.channel_ready_future(self.channel).result(timeout=timeout)
            return
        deadline = time.monotonic() + timeout
        while True:
            for address in self.addresses.rotation():
                if self._connection(address).connects(min(self.connect_timeout, timeout)):
                    self._settle(address)
                    return
            if time.monotonic() > deadline:
                raise grpc.FutureTimeoutError()
            self.sleep(0.1)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _settle(self, address: str) -> None:
        """Make address current (it answered)."""
        while self.addresses.current != address:
            self.addresses.failed(self.addresses.current)

    def _over_any(self, attempt: Callable[[Connection], T], safe: bool = True) -> T:
        """attempt over the current address, then the next ones (each once) while it fails
        with UNAVAILABLE; with safe False only while it was not sent (the address did not
        connect). Raises the last error."""
        last: grpc.RpcError | None = None
        tried: list[str] = []
        for moves, address in enumerate(self.addresses.rotation()):
            if moves:
                self.sleep(addresslist.delay(moves))
            tried.append(address)
            conn = self._connection(address)
            if not conn.connects(self.connect_timeout):
                self.addresses.failed(address)
                continue
            try:
                return attempt(conn)
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or not safe:
                    raise
                self.addresses.failed(address)
                last = exc
        raise last if last is not None else Unreachable(tuple(tried))

    def _pick(self) -> Connection:
        """A connection to send a call that cannot be repeated over: the current address's,
        or the next that connects (Unreachable when none does)."""
        if self.addresses.single:
            return self._connection()
        return self._over_any(lambda conn: conn, safe=False)

    def _invoke(self, conn: Connection, method: str, request: Message, stub_name: str) -> Any:
        stub = getattr(conn, stub_name)
        try:
            return getattr(stub, method)(
                request, metadata=self._metadata_for(conn), timeout=self.timeout
            )
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAUTHENTICATED:
                raise
            self._token = ""  # expired or revoked: authenticate again, once
            return getattr(stub, method)(
                request, metadata=self._metadata_for(conn), timeout=self.timeout
            )

    def _call(
        self, method: str, request: Message, stub_name: str = "stub", read: bool = False
    ) -> Any:
        """A unary call, failing over as the class says (read: it may be repeated)."""
        if self.addresses.single:
            return self._invoke(self._connection(), method, request, stub_name)
        return self._over_any(lambda conn: self._invoke(conn, method, request, stub_name), read)

    def token(self) -> str:
        """A current bearer token for this client's namespace."""
        self.metadata  # noqa: B018 - refreshes the token when needed
        return self._token

    def create_namespace(self, name: str, key_name: str = "", key: str = "") -> JsonDict:
        """A new namespace (system only), optionally with a first key."""
        request = auth_pb2.CreateNamespaceRequest(name=name, key_name=key_name, key=key)
        return to_dict(self._call("Create", request, "namespaces"))

    def list_namespaces(self) -> list[JsonDict]:
        """Namespaces the caller can see."""
        reply = self._call("List", auth_pb2.ListNamespacesRequest(), "namespaces", read=True)
        return [to_dict(n) for n in reply.namespaces]

    def get_namespace(self, name: str) -> JsonDict:
        """One namespace (the caller's own, or any for system)."""
        return to_dict(self._call("Get", auth_pb2.NamespaceRef(name=name), "namespaces", read=True))

    def delete_namespace(self, name: str) -> JsonDict:
        """Delete a namespace (system only; refused while it holds live instances)."""
        return to_dict(self._call("Delete", auth_pb2.NamespaceRef(name=name), "namespaces"))

    def add_key(self, namespace: str, key_name: str, key: str) -> JsonDict:
        """Add or replace a key of a namespace."""
        request = auth_pb2.AddKeyRequest(namespace=namespace, key_name=key_name, key=key)
        return to_dict(self._call("AddKey", request, "namespaces"))

    def delete_key(self, namespace: str, key_name: str) -> JsonDict:
        """Remove a key, revoking its tokens."""
        request = auth_pb2.DeleteKeyRequest(namespace=namespace, key_name=key_name)
        return to_dict(self._call("DeleteKey", request, "namespaces"))

    def create(
        self, spec: JsonDict, node: str = "", request_id: str = "", retry_for: float = 60.0
    ) -> JsonDict:
        """Create an instance from a spec dict (InstanceSpec's fields), on node if given.

        The create carries a client request id (request_id, or a new one), so it is
        retried safely: while the control plane answers UNAVAILABLE (nodes
        reconnecting, the control plane restarting) it is sent again with backoff
        for up to retry_for seconds, and a retry of a create that was in fact made
        returns that instance.
        """
        request = instances_pb2.CreateInstanceRequest(placed_on=node)
        json_format.ParseDict({"spec": spec}, request)
        request.client_request_id = request_id or str(uuid.uuid4())
        deadline = time.monotonic() + retry_for
        delay = 0.2
        while True:
            try:
                return to_dict(self._call("Create", request, read=True))
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if time.monotonic() + delay > deadline:
                    raise
            time.sleep(delay)
            delay = min(delay * 2, 5.0)

    def get(self, ref: str) -> JsonDict:
        """An instance by UUID or name."""
        return to_dict(self._call("Get", instances_pb2.InstanceRef(ref=ref), read=True))

    def list_instances(self, include_deleted: bool = False) -> list[JsonDict]:
        """The namespace's instances, oldest first (read page by page)."""
        found = [i for page in self.instance_pages(include_deleted) for i in page]
        return sorted(found, key=lambda i: (i["created_at"], i["uuid"]))

    def instance_pages(
        self, include_deleted: bool = False, page_size: int = 0
    ) -> Iterator[list[JsonDict]]:
        """The namespace's instances a page at a time, in UUID order (a List call per page).

        page_size 0 means ``PAGE_SIZE``.

        Each page is asked for with the token the previous one returned, so
        an instance created or deleted meanwhile is never listed twice.
        """
        token = ""
        while True:
            request = instances_pb2.ListInstancesRequest(
                include_deleted=include_deleted,
                page_size=page_size or PAGE_SIZE,
                page_token=token,
            )
            reply = self._call("List", request, read=True)
            yield [to_dict(i) for i in reply.instances]
            token = reply.next_page_token
            if not token:
                return

    def delete(self, ref: str) -> JsonDict:
        """Start deleting an instance."""
        return to_dict(self._call("Delete", instances_pb2.InstanceRef(ref=ref)))

    def power(self, ref: str, op: str) -> JsonDict:
        """One of on, off, pause, unpause, soft-reboot, hard-reboot."""
        return to_dict(self._call(POWER_METHODS[op], instances_pb2.InstanceRef(ref=ref)))

    def move(self, ref: str, node: str = "") -> JsonDict:
        """Move a stopped instance to node (placement's choice when empty); system only."""
        request = instances_pb2.MoveInstanceRequest(ref=ref, node=node)
        return to_dict(self._call("Move", request))

    def snapshot(
        self, ref: str, device: str = "", thin: bool = False, label: str = ""
    ) -> list[JsonDict]:
        """Snapshot the instance's disks (or one device); one dict per disk snapshotted."""
        request = instances_pb2.SnapshotInstanceRequest(
            ref=ref, device=device, thin=thin, label_name=label
        )
        saved, self.timeout = self.timeout, max(self.timeout, SNAPSHOT_TIMEOUT)
        try:
            reply = self._call("Snapshot", request)
        finally:
            self.timeout = saved
        return [to_dict(s) for s in reply.snapshots]

    def snapshots(self, ref: str) -> list[JsonDict]:
        """The kept versions of the instance's snapshots."""
        reply = self._call("ListSnapshots", instances_pb2.InstanceRef(ref=ref))
        return [to_dict(s) for s in reply.snapshots]

    def events(self, ref: str, event_type: str = "", limit: int = 100) -> list[JsonDict]:
        """An instance's events, newest first."""
        request = instances_pb2.GetEventsRequest(ref=ref, event_type=event_type, limit=limit)
        return [to_dict(e) for e in self._call("GetEvents", request, read=True).events]

    def watch(self, ref: str = "") -> Iterator[JsonDict]:
        """Instance changes ({"instance": ...}) and events ({"event": ...}) as they happen.

        With several addresses a stream that breaks (UNAVAILABLE) subscribes again on the
        next address and the iterator yields ``{"resubscribed": {"address": ADDRESS}}``
        before carrying on. Changes made while no stream was open are not replayed: a
        watch of one instance (ref) gets the instance as it is now first, as on any
        subscription; a watch of everything should re-read (``list_instances``) when it
        sees the marker. Each address is tried once in a row; a stream that has
        delivered a message or stayed open ``WATCH_SETTLED`` seconds starts the count
        again. Then the last error is raised.
        """
        request = instances_pb2.WatchRequest(ref=ref)
        if self.addresses.single:
            stream = self.stub.Watch(request, metadata=self.metadata)
            for update in stream:
                yield json_format.MessageToDict(update, preserving_proto_field_name=True)
            return
        failures = 0
        conn = self._pick()
        fresh_token = False
        while True:
            opened = time.monotonic()
            try:
                stream = conn.stub.Watch(request, metadata=self._metadata_for(conn))
                for update in stream:
                    failures = 0
                    yield json_format.MessageToDict(update, preserving_proto_field_name=True)
                return
            except grpc.RpcError as exc:
                if exc.code() == grpc.StatusCode.UNAUTHENTICATED and not fresh_token:
                    self._token = ""  # expired, or not taken here: authenticate again, once
                    fresh_token = True
                    continue
                if exc.code() != grpc.StatusCode.UNAVAILABLE:
                    raise
                if time.monotonic() - opened >= WATCH_SETTLED:
                    failures = 0
                self.addresses.failed(conn.target)
                failures += 1
                if failures >= len(self.addresses.addresses):
                    raise
            conn = self._resubscribe(failures)
            fresh_token = False
            yield {"resubscribed": {"address": conn.target}}

    def _resubscribe(self, failures: int) -> Connection:
        """The next connected address to subscribe on again, after a short wait."""
        self.sleep(addresslist.delay(failures))
        return self._pick()

    def wait(
        self,
        ref: str,
        predicate: Callable[[JsonDict], bool],
        timeout: float = 300,
        poll: float = 0.5,
    ) -> JsonDict:
        """Poll an instance until predicate holds (TimeoutError after timeout seconds)."""
        deadline = time.monotonic() + timeout
        while True:
            inst = self.get(ref)
            if predicate(inst):
                return inst
            if time.monotonic() > deadline:
                raise TimeoutError(f"instance {ref} still {inst['state']}/{inst['power_state']}")
            time.sleep(poll)

    # -- agent operations ------------------------------------------------------

    def execute(
        self,
        ref: str,
        command_line: str,
        env: dict[str, str] | None = None,
        cwd: str = "",
        timeout: float = 0,
    ) -> JsonDict:
        """Queue a command in the instance; returns the agent operation."""
        request = agent_pb2.ExecuteRequest(
            ref=ref, command_line=command_line, env=env or {}, cwd=cwd, timeout=timeout
        )
        return to_dict(self._call("Execute", request, "agent"))

    def execute_stream(
        self,
        ref: str,
        command_line: str,
        on_output: Callable[[str, bytes], None],
        env: dict[str, str] | None = None,
        cwd: str = "",
        timeout: float = 0,
    ) -> JsonDict:
        """Run a command, passing output chunks to on_output; returns the finished operation."""
        request = agent_pb2.ExecuteRequest(
            ref=ref, command_line=command_line, env=env or {}, cwd=cwd, timeout=timeout
        )
        final: JsonDict = {}
        conn = self._pick()
        queued = ""
        try:
            for out in conn.agent.ExecuteStream(request, metadata=self._metadata_for(conn)):
                kind = out.WhichOneof("output")
                if kind == "operation":
                    final = to_dict(out.operation)
                    queued = final["uuid"]
                elif kind in ("stdout", "stderr"):
                    on_output(kind, getattr(out, kind))
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.UNAVAILABLE or not queued or self.addresses.single:
                raise
            # The operation is queued in the store: it runs whatever happens to this
            # stream. Wait for it through the next address; output not streamed yet is
            # in its results.
            self.addresses.failed(conn.target)
            return self.wait_operation(queued)
        return final

    def agent_operation(self, uuid: str) -> JsonDict:
        """An agent operation by UUID."""
        return to_dict(
            self._call("GetAgentOperation", agent_pb2.OperationRef(uuid=uuid), "agent", read=True)
        )

    def agent_operations(self, ref: str, include_all: bool = False) -> list[JsonDict]:
        """An instance's queued (or all) agent operations."""
        request = agent_pb2.ListAgentOperationsRequest(ref=ref, all=include_all)
        return [
            to_dict(o)
            for o in self._call("ListAgentOperations", request, "agent", read=True).operations
        ]

    def delete_agent_operation(self, uuid: str) -> JsonDict:
        """Delete an agent operation."""
        return to_dict(
            self._call("DeleteAgentOperation", agent_pb2.OperationRef(uuid=uuid), "agent")
        )

    def wait_operation(self, uuid: str, timeout: float = 600, poll: float = 0.2) -> JsonDict:
        """Poll an agent operation until it is complete or in error."""
        deadline = time.monotonic() + timeout
        while True:
            op = self.agent_operation(uuid)
            if op["state"] in ("complete", "error", "deleted"):
                return op
            if time.monotonic() > deadline:
                raise TimeoutError(f"agent operation {uuid} still {op['state']}")
            time.sleep(poll)

    def put_blob(self, ref: str, blob_uuid: str, path: str, mode: int) -> JsonDict:
        """Queue copying a blob into the instance."""
        request = agent_pb2.PutRequest(ref=ref, blob_uuid=blob_uuid, path=path, mode=mode)
        return to_dict(self._call("Put", request, "agent"))

    def get_file(self, ref: str, path: str) -> JsonDict:
        """Queue copying a file out of the instance into a blob."""
        return to_dict(self._call("Get", agent_pb2.GetRequest(ref=ref, path=path), "agent"))

    # -- blobs -------------------------------------------------------------------

    def upload_blob(
        self, chunks: Iterator[bytes], progress: Callable[[int], None] | None = None
    ) -> JsonDict:
        """Stream bytes into a new blob (or the existing one with the same content)."""

        def messages() -> Iterator[blobs_pb2.BlobChunk]:
            for chunk in chunks:
                if progress is not None:
                    progress(len(chunk))
                yield blobs_pb2.BlobChunk(data=chunk)

        conn = self._pick()  # sent once: the chunks cannot be read again
        return to_dict(conn.blobs.Upload(messages(), metadata=self._metadata_for(conn)))

    def download_blob(self, uuid: str, offset: int = 0, limit: int = 0) -> Iterator[bytes]:
        """A blob's bytes, in chunks (with several addresses, a broken download resumes
        through the next address at the byte it had reached)."""
        moved = 0
        failures = 0  # in a row, without a byte
        while True:
            conn = self._pick()
            request = blobs_pb2.DownloadRequest(
                uuid=uuid, offset=offset + moved, limit=max(limit - moved, 0) if limit else 0
            )
            try:
                for chunk in conn.blobs.Download(request, metadata=self._metadata_for(conn)):
                    moved += len(chunk.data)
                    failures = 0
                    yield chunk.data
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or self.addresses.single:
                    raise
                self.addresses.failed(conn.target)
                failures += 1
                if failures >= len(self.addresses.addresses):
                    raise
                if limit and moved >= limit:
                    return

    def blob(self, uuid: str) -> JsonDict:
        """A blob's record."""
        return to_dict(self._call("GetBlob", blobs_pb2.BlobRef(uuid=uuid), "blobs", read=True))

    def find_blob(self, sha512: str) -> JsonDict | None:
        """The blob with this content hash, if any."""
        found = self._call(
            "SearchBlobs", blobs_pb2.SearchBlobsRequest(sha512=sha512), "blobs", read=True
        )
        return to_dict(found.blobs[0]) if found.blobs else None

    # -- artifacts ---------------------------------------------------------------

    def upload_artifact(
        self, name: str, chunks: Iterator[bytes], progress: Callable[[int], None] | None = None
    ) -> JsonDict:
        """Upload bytes as the newest version of the upload artifact NAME."""

        def messages() -> Iterator[artifacts_pb2.ArtifactUploadChunk]:
            yield artifacts_pb2.ArtifactUploadChunk(name=name)
            for chunk in chunks:
                if progress is not None:
                    progress(len(chunk))
                yield artifacts_pb2.ArtifactUploadChunk(data=chunk)

        conn = self._pick()  # sent once: the chunks cannot be read again
        return to_dict(conn.artifacts.Upload(messages(), metadata=self._metadata_for(conn)))

    def label_blob(self, name: str, blob_uuid: str) -> JsonDict:
        """Point the label NAME at a blob (a new version)."""
        request = artifacts_pb2.FromBlobRequest(name=name, blob_uuid=blob_uuid, type="label")
        return to_dict(self._call("FromBlob", request, "artifacts"))

    def artifact(self, ref: str) -> JsonDict:
        """An artifact by UUID or TYPE:NAME."""
        return to_dict(
            self._call("GetArtifact", artifacts_pb2.ArtifactRef(ref=ref), "artifacts", read=True)
        )

    def list_artifacts(self) -> list[JsonDict]:
        """The namespace's artifacts."""
        found = self._call(
            "ListArtifacts", artifacts_pb2.ListArtifactsRequest(), "artifacts", read=True
        )
        return [to_dict(a) for a in found.artifacts]

    def delete_artifact(self, ref: str) -> JsonDict:
        """Delete an artifact and all its versions."""
        request = artifacts_pb2.ArtifactRef(ref=ref)
        return to_dict(self._call("DeleteArtifact", request, "artifacts"))

    def delete_all_artifacts(self) -> list[JsonDict]:
        """Delete every artifact of the namespace."""
        request = artifacts_pb2.DeleteAllArtifactsRequest(confirm=True)
        found = self._call("DeleteAllArtifacts", request, "artifacts")
        return [to_dict(a) for a in found.artifacts]

    def artifact_versions(self, ref: str) -> list[JsonDict]:
        """An artifact's versions, oldest first, with their blobs' sizes."""
        found = self._call(
            "ListVersions", artifacts_pb2.ArtifactRef(ref=ref), "artifacts", read=True
        )
        return [to_dict(v) for v in found.versions]

    def delete_artifact_version(self, ref: str, index: int) -> JsonDict:
        """Delete one version of an artifact."""
        request = artifacts_pb2.DeleteVersionRequest(ref=ref, index=index)
        return to_dict(self._call("DeleteVersion", request, "artifacts"))

    def set_max_versions(self, ref: str, max_versions: int) -> JsonDict:
        """Keep at most max_versions versions of an artifact."""
        request = artifacts_pb2.SetMaxVersionsRequest(ref=ref, max_versions=max_versions)
        return to_dict(self._call("SetMaxVersions", request, "artifacts"))

    def artifact_events(self, ref: str, event_type: str = "", limit: int = 100) -> list[JsonDict]:
        """An artifact's events, newest first."""
        request = instances_pb2.GetEventsRequest(ref=ref, event_type=event_type, limit=limit)
        return [to_dict(e) for e in self._call("GetEvents", request, "artifacts", read=True).events]

    def share_artifact(self, ref: str, shared: bool = True) -> JsonDict:
        """Share a system artifact with every namespace (or stop sharing it)."""
        method = "Share" if shared else "Unshare"
        return to_dict(self._call(method, artifacts_pb2.ArtifactRef(ref=ref), "artifacts"))

    def list_blobs(self) -> list[JsonDict]:
        """Live blobs (all for system, else those the namespace's artifacts and instances use)."""
        found = self._call("ListBlobs", blobs_pb2.ListBlobsRequest(), "blobs", read=True)
        return [to_dict(b) for b in found.blobs]

    def blob_events(self, uuid: str, event_type: str = "", limit: int = 100) -> list[JsonDict]:
        """A blob's events, newest first."""
        request = instances_pb2.GetEventsRequest(ref=uuid, event_type=event_type, limit=limit)
        return [to_dict(e) for e in self._call("GetEvents", request, "blobs", read=True).events]

    # -- consoles ------------------------------------------------------------

    def console_data(self, ref: str, length: int = 0) -> bytes:
        """The last ``length`` bytes of the serial console log (10240 when 0, all when -1)."""
        request = consoles_pb2.ConsoleDataRequest(ref=ref, length=length)
        return bytes(self._call("GetConsoleData", request, "consoles", read=True).data)

    def clear_console(self, ref: str) -> None:
        """Empty the serial console log (an audit event records it)."""
        self._call("ClearConsoleData", instances_pb2.InstanceRef(ref=ref), "consoles")

    def screenshot(self, ref: str) -> str:
        """Capture the display as a PNG blob; returns the blob's uuid."""
        reply = self._call("Screenshot", instances_pb2.InstanceRef(ref=ref), "consoles")
        return str(reply.blob_uuid)

    def vdi_console_helper(self, ref: str) -> JsonDict:
        """The virt-viewer file (``vv``) and the display's type, host and ports."""
        reply = self._call(
            "VdiConsoleHelper", instances_pb2.InstanceRef(ref=ref), "consoles", read=True
        )
        return to_dict(reply)

    def attach(self, ref: str, keystrokes: Iterator[bytes]) -> ConsoleOutput:
        """An interactive serial console: yields output while ``keystrokes`` are sent.

        The session ends when ``keystrokes`` ends or the server ends it. Call
        ``cancel()`` on the returned iterator to stop reading early.
        """

        # With several addresses successive sessions share the keystrokes (see Keystrokes).
        shared = None if self.addresses.single else Keystrokes(keystrokes)

        def messages() -> Iterator[consoles_pb2.ConsoleInput]:
            yield consoles_pb2.ConsoleInput(ref=ref)
            for data in keystrokes if shared is None else shared.session():
                yield consoles_pb2.ConsoleInput(data=data)

        def start() -> Any:
            conn = self._pick()
            return conn.consoles.Attach(messages(), metadata=self._metadata_for(conn)), conn

        return ConsoleOutput(start, self.addresses)

    # -- metadata ----------------------------------------------------------------

    def create_network(
        self,
        name: str,
        netblock: str,
        provide_dhcp: bool = True,
        provide_nat: bool = True,
        provide_dns: bool = False,
    ) -> JsonDict:
        """A new network in the client's namespace."""
        request = networks_pb2.CreateNetworkRequest(
            name=name,
            netblock=netblock,
            provide_dhcp=provide_dhcp,
            provide_nat=provide_nat,
            provide_dns=provide_dns,
        )
        return to_dict(self._call("Create", request, "nets"))

    def get_network(self, ref: str) -> JsonDict:
        """A network by UUID or name."""
        return to_dict(self._call("Get", networks_pb2.NetworkRef(ref=ref), "nets", read=True))

    def list_networks(self, include_deleted: bool = False) -> list[JsonDict]:
        """The namespace's networks."""
        request = networks_pb2.ListNetworksRequest(include_deleted=include_deleted)
        return [to_dict(n) for n in self._call("List", request, "nets", read=True).networks]

    def delete_network(self, ref: str, clean: bool = False) -> JsonDict:
        """Delete a network (refused while instances use it)."""
        request = networks_pb2.DeleteNetworkRequest(ref=ref, clean=clean)
        return to_dict(self._call("Delete", request, "nets"))

    def network_addresses(self, ref: str) -> list[JsonDict]:
        """Who holds which address of a network."""
        reply = self._call("ListAddresses", networks_pb2.NetworkRef(ref=ref), "nets", read=True)
        return [to_dict(a) for a in reply.addresses]

    def network_interfaces(self, ref: str) -> list[JsonDict]:
        """The interfaces on a network."""
        reply = self._call("ListInterfaces", networks_pb2.NetworkRef(ref=ref), "nets", read=True)
        return [to_dict(i) for i in reply.interfaces]

    def network_events(self, ref: str, event_type: str = "", limit: int = 100) -> list[JsonDict]:
        """A network's events, newest first."""
        request = instances_pb2.GetEventsRequest(ref=ref, event_type=event_type, limit=limit)
        return [to_dict(e) for e in self._call("GetEvents", request, "nets", read=True).events]

    def interfaces(self, ref: str) -> list[JsonDict]:
        """An instance's interfaces, in order."""
        reply = self._call(
            "ListForInstance", instances_pb2.InstanceRef(ref=ref), "ifaces", read=True
        )
        return [to_dict(i) for i in reply.interfaces]

    def get_interface(self, uuid: str) -> JsonDict:
        """An interface by UUID."""
        return to_dict(self._call("Get", networks_pb2.InterfaceRef(uuid=uuid), "ifaces", read=True))

    def attach_interface(self, ref: str, network: JsonDict) -> JsonDict:
        """Hot plug an interface (a NetworkSpec dict) into a running instance."""
        request = networks_pb2.AttachInterfaceRequest(instance=ref)
        json_format.ParseDict(network, request.network)
        return to_dict(self._call("Attach", request, "ifaces"))

    def float_interface(self, uuid: str) -> JsonDict:
        """Give an interface a floating address."""
        return to_dict(self._call("Float", networks_pb2.InterfaceRef(uuid=uuid), "ifaces"))

    def defloat_interface(self, uuid: str) -> JsonDict:
        """Release an interface's floating address."""
        return to_dict(self._call("Defloat", networks_pb2.InterfaceRef(uuid=uuid), "ifaces"))

    def get_metadata(self, object_type: str, ref: str) -> JsonDict:
        """An object's metadata (object_type: instance, blob, artifact, ...)."""
        request = metadata_pb2.MetadataRef(object_type=object_type, ref=ref)
        return _metadata(self._call("Get", request, "meta", read=True))

    def set_metadata(self, object_type: str, ref: str, key: str, value: Any) -> JsonDict:
        """Set one key to any JSON value; returns the whole metadata."""
        request = metadata_pb2.SetMetadataRequest(object_type=object_type, ref=ref, key=key)
        json_format.ParseDict(value, request.value)
        return _metadata(self._call("Set", request, "meta"))

    def delete_metadata(self, object_type: str, ref: str, key: str) -> JsonDict:
        """Remove one key (absent is fine); returns the whole metadata."""
        request = metadata_pb2.DeleteMetadataRequest(object_type=object_type, ref=ref, key=key)
        return _metadata(self._call("Delete", request, "meta"))

    # -- nodes (administrators only) ------------------------------------------

    def list_nodes(self) -> list[JsonDict]:
        """Every node, by name (deleted ones too)."""
        reply = self._call("ListNodes", nodes_pb2.ListNodesRequest(), "node_admin", read=True)
        return [_node(n) for n in reply.nodes]

    def get_node(self, name: str) -> JsonDict:
        """One node with its instances."""
        return _node(self._call("GetNode", nodes_pb2.NodeRef(name=name), "node_admin", read=True))

    def node_action(self, verb: str, name: str) -> JsonDict:
        """disable, enable or delete a node; returns the node afterwards."""
        method = {"disable": "DisableNode", "enable": "EnableNode", "delete": "DeleteNode"}[verb]
        return _node(self._call(method, nodes_pb2.NodeRef(name=name), "node_admin"))

    def drain_node(self, name: str) -> JsonDict:
        """Mark a node draining; returns it with its blocking and to-move instances."""
        reply = self._call("DrainNode", nodes_pb2.NodeRef(name=name), "node_admin")
        found = to_dict(reply)
        found["node"] = _node(reply.node)
        return found

    def revoke_certificate(self, serial: int, name: str = "", reason: str = "") -> JsonDict:
        """Tell the control plane a certificate is revoked (every control plane refuses it)."""
        request = nodes_pb2.RevokeCertificateRequest(serial=str(serial), name=name, reason=reason)
        return to_dict(self._call("RevokeCertificate", request, "node_admin"))

    def list_revocations(self) -> list[JsonDict]:
        """Every revoked certificate the control plane knows."""
        reply = self._call(
            "ListRevocations", nodes_pb2.ListRevocationsRequest(), "node_admin", read=True
        )
        return [to_dict(r) for r in reply.revocations]

    def node_events(self, name: str, event_type: str = "", limit: int = 100) -> list[JsonDict]:
        """A node's events, newest first."""
        request = nodes_pb2.GetNodeEventsRequest(name=name, event_type=event_type, limit=limit)
        return [
            to_dict(e) for e in self._call("GetNodeEvents", request, "node_admin", read=True).events
        ]

    # -- URL cache and trust -------------------------------------------------

    def cache_url(self, url: str, name: str = "", shared: bool = False) -> JsonDict:
        """Start caching an http(s) URL as upload NAME; answers the artifact at once."""
        request = artifacts_pb2.CacheUrlRequest(url=url, name=name, shared=shared)
        return to_dict(self._call("CacheUrl", request, "artifacts"))

    def wait_fetch(
        self,
        ref: str,
        progress: Callable[[JsonDict], None] = lambda art: None,
        timeout: float = 3600,
        poll: float = 0.25,
    ) -> JsonDict:
        """The artifact once its fetch has ended (progress sees it while it runs)."""
        deadline = time.monotonic() + timeout
        while True:
            art = self.artifact(ref)
            if art.get("fetch", {}).get("state") != "fetching":
                return art
            progress(art)
            if time.monotonic() > deadline:
                raise TimeoutError(f"artifact {ref} is still being fetched")
            time.sleep(poll)

    def trust(self, namespace: str, trusted: str, on: bool = True) -> JsonDict:
        """Let trusted see and use the namespace's artifacts (or stop it)."""
        request = auth_pb2.TrustRequest(namespace=namespace, trusted=trusted)
        return to_dict(self._call("Trust" if on else "Untrust", request, "namespaces"))


def _node(pb: nodes_pb2.NodeInfo) -> JsonDict:
    found = to_dict(pb)
    found["metadata"] = _whole_numbers(json_format.MessageToDict(pb.metadata))
    for key in ("memory_mb", "disk_gb", "committed_memory_mb", "committed_disk_gb"):
        found[key] = int(found[key])
    return found


def _metadata(found: metadata_pb2.Metadata) -> JsonDict:
    data: JsonDict = json_format.MessageToDict(found.metadata)
    return _whole_numbers(data)  # type: ignore[no-any-return]


def _whole_numbers(value: Any) -> Any:
    """JSON with whole-number floats as ints (protobuf Value has only doubles)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _whole_numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_whole_numbers(v) for v in value]
    return value


class Keystrokes:
    """One iterator of keystrokes shared by successive console sessions: a thread reads it
    and hands each keystroke to the newest session (gRPC's thread sending an ended
    session's input may still be waiting inside the iterator)."""

    def __init__(self, source: Iterator[bytes]) -> None:
        self.source = source
        self.lock = threading.Lock()
        self.current: queue.Queue[bytes | None] = queue.Queue()
        self.reading = False
        self.ended = False

    def session(self) -> Iterator[bytes]:
        """The keystrokes for a new session (the previous session's input ends)."""
        mine: queue.Queue[bytes | None] = queue.Queue()
        with self.lock:
            self.current.put(None)
            self.current = mine
            if self.ended:
                mine.put(None)
            if not self.reading:
                self.reading = True
                threading.Thread(target=self._read, daemon=True).start()
        while (data := mine.get()) is not None:
            yield data

    def _read(self) -> None:
        for data in self.source:
            with self.lock:
                self.current.put(data)
        with self.lock:
            self.ended = True
            self.current.put(None)


class ConsoleOutput:
    """Console output chunks from an Attach call; cancel() ends it.

    With several addresses a session that breaks (UNAVAILABLE) attaches again
    through the next address, round the list with a short growing wait, for up to
    ``REATTACH_FOR`` seconds from the break (the instance's node agent needs a moment
    to reach another control plane); keystrokes typed meanwhile may be lost.
    """

    def __init__(self, start: Callable[[], Any], addresses: AddressList) -> None:
        self.start = start
        self.addresses = addresses
        self.call, self.conn = start()
        self.cancelled = False

    def __iter__(self) -> Iterator[bytes]:
        failures = 0
        broke = 0.0
        while True:
            try:
                for message in self.call:
                    failures = 0
                    yield bytes(message.data)
                return
            except grpc.RpcError as exc:
                if exc.code() != grpc.StatusCode.UNAVAILABLE or self.addresses.single:
                    raise
                if failures == 0:
                    broke = time.monotonic()
                failures += 1
                self.addresses.failed(self.conn.target)
                if self.cancelled or time.monotonic() - broke > REATTACH_FOR:
                    raise
                time.sleep(addresslist.delay(failures))
                self.call, self.conn = self.start()

    def cancel(self) -> None:
        """Stop the call."""
        self.cancelled = True
        self.call.cancel()
