"""Agent operations: execute, put and get through the in-guest agent, and listing them."""

from __future__ import annotations

from typing import Any

from gateway import views
from gateway.fields import INT64_MAX, Field
from gateway.routes.instances import fetch, fetch_created
from gateway.routing import Call, RouteTable
from protos import agent_pb2

table = RouteTable()
# An instance without a usable agent: Shaken Fist answers 400 "instance agent not ready";
# here 409, a conflict with the instance's state (a 400 says the request is malformed,
# and a request valid by the schema never is; see docs/rest.md).
AGENT_REFUSED = {"FAILED_PRECONDITION": 409}
# A file's path inside the instance, as the control plane takes it: absolute, no NUL.
INSTANCE_PATH: dict[str, Any] = {"pattern": "^/[^\\x00]*$", "maxLength": 4096}


@table.route(
    "POST",
    "/instances/{ref}/agent/execute",
    "Run a command line in the instance (poll the operation until complete)",
    body=(Field("command_line", "str", True, rules={"pattern": r"\S"}),),
    overrides=AGENT_REFUSED,
)
async def execute(call: Call) -> Any:
    inst = await fetch_created(call, call.param("ref"))
    request = agent_pb2.ExecuteRequest(ref=inst.uuid, command_line=call.body["command_line"])
    return views.agent_operation(await call.rpc(call.api.agent.Execute, request))


@table.route(
    "POST",
    "/instances/{ref}/agent/put",
    "Copy a blob into the instance at path, with a mode",
    body=(
        Field("blob_uuid", "str", True),
        Field("path", "str", True, rules=INSTANCE_PATH),
        Field(
            "mode",
            "mode",
            doc="st_mode or permission bits; an octal string is accepted",
            rules={"minimum": 0, "maximum": INT64_MAX},
        ),
    ),
    overrides=AGENT_REFUSED,
)
async def put(call: Call) -> Any:
    inst = await fetch_created(call, call.param("ref"))
    request = agent_pb2.PutRequest(
        ref=inst.uuid,
        blob_uuid=call.body["blob_uuid"],
        path=call.body["path"],
        mode=call.body.get("mode", 0o644),
    )
    return views.agent_operation(await call.rpc(call.api.agent.Put, request))


@table.route(
    "POST",
    "/instances/{ref}/agent/get",
    "Copy a file out of the instance into a blob (results 0 content_blob)",
    body=(Field("path", "str", True, rules=INSTANCE_PATH),),
    overrides=AGENT_REFUSED,
)
async def get(call: Call) -> Any:
    inst = await fetch_created(call, call.param("ref"))
    request = agent_pb2.GetRequest(ref=inst.uuid, path=call.body["path"])
    return views.agent_operation(await call.rpc(call.api.agent.Get, request))


@table.route(
    "GET",
    "/instances/{ref}/agentoperations",
    "An instance's queued agent operations (every one with all)",
    body=(Field("all", "bool"),),
)
async def instance_operations(call: Call) -> Any:
    inst = await fetch(call, call.param("ref"))
    request = agent_pb2.ListAgentOperationsRequest(ref=inst.uuid, all=call.body.get("all", False))
    found = await call.rpc(call.api.agent.ListAgentOperations, request)
    return [views.agent_operation(op) for op in found.operations]


@table.route("GET", "/agentoperations/{uuid}", "An agent operation")
async def get_operation(call: Call) -> Any:
    ref = agent_pb2.OperationRef(uuid=call.uuid_param("uuid", "agent operation"))
    return views.agent_operation(await call.rpc(call.api.agent.GetAgentOperation, ref))


@table.route(
    "DELETE", "/agentoperations/{uuid}", "Delete an agent operation (a queued one will not run)"
)
async def delete_operation(call: Call) -> Any:
    ref = agent_pb2.OperationRef(uuid=call.uuid_param("uuid", "agent operation"))
    return views.agent_operation(await call.rpc(call.api.agent.DeleteAgentOperation, ref))
