"""Schema-driven fuzzing of the REST gateway (schemathesis) in front of a real control plane.

Every operation of the gateway's own ``/openapi.json`` gets cases generated from
its schema, with a fixed seed and a bounded number of examples, sent with a
valid token and without one. In half the cases with a token, the path names
a real object (an instance on a network, its interface and agent operation, a
blob, an artifact, an upload, the node, a namespace), so bodies are checked
by handlers and the control plane, not only refused with a 404; operations
that delete run last. Asserted: no answer is a 500; without a token every
non-public route answers 401; with one, no request valid by the schema is
refused as malformed (400 or 422). A pass of schema-breaking (negative)
cases checks that those get a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from controlplane.app import ControlPlane
from protos import (
    agent_pb2,
    agent_pb2_grpc,
    artifacts_pb2,
    artifacts_pb2_grpc,
    auth_pb2,
    auth_pb2_grpc,
    blobs_pb2,
    blobs_pb2_grpc,
    instances_pb2,
    instances_pb2_grpc,
    networks_pb2,
    networks_pb2_grpc,
    uploads_pb2,
    uploads_pb2_grpc,
)
from tests.component.conftest import SYSTEM_KEY, FakeNode, authed, create_request
from tests.component.test_gateway import start_gateway

PUBLIC = {"/", "/auth", "/openapi.json", "/healthz", "/readyz"}
# Examples per operation: about 70 operations, twice (with and without a token).
EXAMPLES_WITH_TOKEN = 60
EXAMPLES_WITHOUT_TOKEN = 10
# Cases that break the schema on purpose: any 4xx is right, a 500 is not.
EXAMPLES_NEGATIVE = 15
SEED = 20261204
# Object kind of a path's first parameter, by the path's first word.
KINDS = {
    "instances": "instance",
    "networks": "network",
    "interfaces": "interface",
    "agentoperations": "operation",
    "blobs": "blob",
    "artifacts": "artifact",
    "upload": "upload",
    "nodes": "node",
    "auth": "namespace",
}


@dataclass
class Findings:
    """What the fuzzer saw that it must not: one example per operation, status and error."""

    problems: dict[tuple[str, str, str, int, str], str] = field(default_factory=dict)
    calls: int = 0

    def add(self, what: str, case: Any, response: requests.Response) -> None:
        body = case.body if not isinstance(case.body, bytes) else case.body[:80]
        sent = json.dumps(body, default=str)[:200]
        error = re.sub(r"[0-9]+", "N", response.text)[:40]
        key = (what, case.method, case.operation.path, response.status_code, error)
        self.problems.setdefault(
            key,
            f"{what}: {case.method} {case.formatted_path} -> {response.status_code}"
            f" {response.text[:200]} body={sent}",
        )


def real_parameter(operation: Any, real: dict[str, str]) -> tuple[str, str] | None:
    """(path parameter, a real object's reference) for operation, if its path names one."""
    names = [p.name for p in operation.path_parameters]
    kind = KINDS.get(operation.path.strip("/").split("/")[0])
    if not names or kind is None or kind not in real:
        return None
    return names[0], real[kind]


def fuzz_operation(
    operation: Any,
    url: str,
    session: requests.Session,
    token: str,
    findings: Findings,
    real: dict[str, str],
) -> None:
    """One operation's cases, with a token and without."""
    public = operation.path in PUBLIC
    target = real_parameter(operation, real)
    rng = random.Random(f"{SEED} {operation.method} {operation.path}")
    passes = (
        (True, EXAMPLES_WITH_TOKEN, GenerationMode.POSITIVE),
        (True, EXAMPLES_NEGATIVE, GenerationMode.NEGATIVE),
        (False, EXAMPLES_WITHOUT_TOKEN, GenerationMode.POSITIVE),
    )
    for authorized, examples, mode in passes:
        headers = {"Authorization": f"Bearer {token}"} if authorized else {}

        def checker(authorized: bool, headers: dict[str, str], valid: bool) -> Any:
            def check(case: Any) -> None:
                if authorized and valid and target is not None and rng.random() < 0.5:
                    case.path_parameters[target[0]] = target[1]
                response = case.call(base_url=url, session=session, headers=headers, timeout=30)
                findings.calls += 1
                status = response.status_code
                if status >= 500 and status not in (501, 503, 507):
                    findings.add("5xx", case, response)
                elif not authorized and not public and status != 401:
                    findings.add("not 401 without a token", case, response)
                elif authorized and valid and status in (400, 422):
                    findings.add("schema-valid request refused as malformed", case, response)

            return check

        run = seed(SEED)(
            settings(
                max_examples=examples,
                deadline=None,
                database=None,
                derandomize=True,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )(
                given(case=operation.as_strategy(generation_mode=mode))(
                    checker(authorized, headers, mode == GenerationMode.POSITIVE)
                )
            )
        )
        try:
            run()
        except Unsatisfiable:
            # Nothing to break in an operation without parameters or body.
            assert mode == GenerationMode.NEGATIVE


def fuzz(url: str, token: str, findings: Findings, real: dict[str, str]) -> None:
    """Run every operation's cases against url (blocking: call it in a thread)."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    session = requests.Session()
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    # Deleting last, so the real objects are there for the other operations.
    for operation in sorted(operations, key=lambda op: op.method.upper() == "DELETE"):
        fuzz_operation(operation, url, session, token, findings, real)


async def real_objects(channel: grpc.aio.Channel) -> dict[str, str]:
    """Objects of the system namespace for the fuzz to name, by kind (see KINDS)."""
    namespaces = await authed(auth_pb2_grpc.NamespaceServiceStub, channel)
    # Not system: a fuzzed key change there would revoke the fuzz's own token.
    await namespaces.Create(auth_pb2.CreateNamespaceRequest(name="fuzzns"))
    nets = await authed(networks_pb2_grpc.NetworkServiceStub, channel)
    net = await nets.Create(
        networks_pb2.CreateNetworkRequest(name="fuzznet", netblock="10.8.0.0/24")
    )
    api = await authed(instances_pb2_grpc.InstanceServiceStub, channel)
    inst = await api.Create(
        create_request("fuzzvm", side_channels=["sf-agent"], networks=[{"network_uuid": net.uuid}])
    )
    for _ in range(200):
        if (await api.Get(instances_pb2.InstanceRef(ref=inst.uuid))).state == "created":
            break
        await asyncio.sleep(0.05)
    ifaces = await (await authed(networks_pb2_grpc.InterfaceServiceStub, channel)).ListForInstance(
        instances_pb2.InstanceRef(ref=inst.uuid)
    )
    op = await (await authed(agent_pb2_grpc.AgentServiceStub, channel)).Execute(
        agent_pb2.ExecuteRequest(ref=inst.uuid, command_line="id")
    )

    async def chunks() -> AsyncIterator[blobs_pb2.BlobChunk]:
        yield blobs_pb2.BlobChunk(data=b"fuzz bytes")

    blob = await (await authed(blobs_pb2_grpc.BlobServiceStub, channel)).Upload(chunks())
    artifact = await (await authed(artifacts_pb2_grpc.ArtifactServiceStub, channel)).FromBlob(
        artifacts_pb2.FromBlobRequest(name="fuzzlabel", blob_uuid=blob.uuid, type="label")
    )
    upload = await (await authed(uploads_pb2_grpc.UploadServiceStub, channel)).Create(
        uploads_pb2.CreateUploadRequest()
    )
    return {
        "instance": inst.uuid,
        "network": net.uuid,
        "interface": ifaces.interfaces[0].uuid,
        "operation": op.uuid,
        "blob": blob.uuid,
        "artifact": artifact.uuid,
        "upload": upload.uuid,
        "node": "node1",
        "namespace": "fuzzns",
    }


@pytest.fixture
async def gateway(
    plane: ControlPlane, node: FakeNode
) -> AsyncIterator[tuple[str, str, dict[str, str]]]:
    """A gateway in front of the plane (one fake node), a system token, real objects."""
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        real = await real_objects(channel)
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/auth", json={"namespace": "system", "key": SYSTEM_KEY}) as r,
    ):
        token = (await r.json())["access_token"]
    yield url, token, real
    await runner.cleanup()


@pytest.mark.timeout(300)
async def test_schema_valid_requests_are_never_500_or_malformed(
    gateway: tuple[str, str, dict[str, str]],
) -> None:
    """Fuzzed requests: no 500, 401 for every one without a token, no 400 for a valid one."""
    url, token, real = gateway
    findings = Findings()
    await asyncio.wait_for(asyncio.to_thread(fuzz, url, token, findings, real), 240)
    assert findings.calls > 100
    assert not findings.problems, "\n".join(list(findings.problems.values())[:60])
