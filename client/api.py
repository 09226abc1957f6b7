"""A small synchronous client of the InstanceService, used by the CLI and tools.

    from client.api import Client
    c = Client("127.0.0.1:13100", namespace="system")
    inst = c.create({"name": "demo", "cpus": 1, "memory": 512,
                     "disks": [{"size_gb": 2, "base": "debian:11"}]})
    c.wait(inst["uuid"], lambda i: i["state"] in ("created", "error"))

Results are plain dicts (protobuf JSON with the proto field names).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
from google.protobuf import json_format
from google.protobuf.message import Message

from protos import instances_pb2, instances_pb2_grpc

JsonDict = dict[str, Any]

POWER_METHODS = {
    "on": "PowerOn",
    "off": "PowerOff",
    "pause": "Pause",
    "unpause": "Unpause",
    "soft-reboot": "SoftReboot",
    "hard-reboot": "HardReboot",
}


def to_dict(message: Message) -> JsonDict:
    """A message as a dict, defaults included, with proto field names."""
    return json_format.MessageToDict(
        message, preserving_proto_field_name=True, always_print_fields_with_no_presence=True
    )


class Client:
    """One channel to a control plane, calls made in one namespace."""

    def __init__(self, target: str, namespace: str = "system", timeout: float = 300) -> None:
        self.channel = grpc.insecure_channel(target)
        self.stub = instances_pb2_grpc.InstanceServiceStub(self.channel)
        self.metadata = (("x-namespace", namespace),)
        self.timeout = timeout

    def close(self) -> None:
        """Close the channel."""
        self.channel.close()

    def channel_ready(self, timeout: float) -> None:
        """Wait until the control plane is reachable (grpc.FutureTimeoutError if not)."""
        grpc.channel_ready_future(self.channel).result(timeout=timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, request: Message) -> Any:
        return getattr(self.stub, method)(request, metadata=self.metadata, timeout=self.timeout)

    def create(self, spec: JsonDict) -> JsonDict:
        """Create an instance from a spec dict (InstanceSpec's fields)."""
        request = instances_pb2.CreateInstanceRequest()
        json_format.ParseDict({"spec": spec}, request)
        return to_dict(self._call("Create", request))

    def get(self, ref: str) -> JsonDict:
        """An instance by UUID or name."""
        return to_dict(self._call("Get", instances_pb2.InstanceRef(ref=ref)))

    def list_instances(self, include_deleted: bool = False) -> list[JsonDict]:
        """The namespace's instances."""
        request = instances_pb2.ListInstancesRequest(include_deleted=include_deleted)
        return [to_dict(i) for i in self._call("List", request).instances]

    def delete(self, ref: str) -> JsonDict:
        """Start deleting an instance."""
        return to_dict(self._call("Delete", instances_pb2.InstanceRef(ref=ref)))

    def power(self, ref: str, op: str) -> JsonDict:
        """One of on, off, pause, unpause, soft-reboot, hard-reboot."""
        return to_dict(self._call(POWER_METHODS[op], instances_pb2.InstanceRef(ref=ref)))

    def events(self, ref: str, event_type: str = "", limit: int = 100) -> list[JsonDict]:
        """An instance's events, newest first."""
        request = instances_pb2.GetEventsRequest(ref=ref, event_type=event_type, limit=limit)
        return [to_dict(e) for e in self._call("GetEvents", request).events]

    def watch(self, ref: str = "") -> Iterator[JsonDict]:
        """Instance changes ({"instance": ...}) and events ({"event": ...}) as they happen."""
        stream = self.stub.Watch(instances_pb2.WatchRequest(ref=ref), metadata=self.metadata)
        for update in stream:
            yield json_format.MessageToDict(update, preserving_proto_field_name=True)

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
