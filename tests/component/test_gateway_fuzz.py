"""Schema-driven fuzzing of the REST gateway (schemathesis) in front of a real control plane.

Every operation of the gateway's own ``/openapi.json`` gets cases generated from
its schema, with a fixed seed and a bounded number of examples, sent with a
valid token and without one. Asserted: no answer is a 500; without a token
every non-public route answers 401; with one, no request valid by the schema
is refused as malformed (400 or 422). A pass of schema-breaking (negative)
cases checks that those get a 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from controlplane.app import ControlPlane
from tests.component.conftest import SYSTEM_KEY, FakeNode
from tests.component.test_gateway import start_gateway

PUBLIC = {"/", "/auth", "/openapi.json", "/healthz", "/readyz"}
# Examples per operation: about 70 operations, twice (with and without a token).
EXAMPLES_WITH_TOKEN = 60
EXAMPLES_WITHOUT_TOKEN = 10
# Cases that break the schema on purpose: any 4xx is right, a 500 is not.
EXAMPLES_NEGATIVE = 15


@dataclass
class Findings:
    """What the fuzzer saw that it must not."""

    problems: list[str] = field(default_factory=list)
    calls: int = 0

    def add(self, what: str, case: Any, response: requests.Response) -> None:
        body = case.body if not isinstance(case.body, bytes) else case.body[:80]
        sent = json.dumps(body, default=str)[:200]
        self.problems.append(
            f"{what}: {case.method} {case.formatted_path} -> {response.status_code}"
            f" {response.text[:200]} body={sent}"
        )


def fuzz_operation(
    operation: Any, url: str, session: requests.Session, token: str, findings: Findings
) -> None:
    """One operation's cases, with a token and without."""
    public = operation.path in PUBLIC
    passes = (
        (True, EXAMPLES_WITH_TOKEN, GenerationMode.POSITIVE),
        (True, EXAMPLES_NEGATIVE, GenerationMode.NEGATIVE),
        (False, EXAMPLES_WITHOUT_TOKEN, GenerationMode.POSITIVE),
    )
    for authorized, examples, mode in passes:
        headers = {"Authorization": f"Bearer {token}"} if authorized else {}

        def checker(authorized: bool, headers: dict[str, str], valid: bool) -> Any:
            def check(case: Any) -> None:
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

        run = seed(20261204)(
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


def fuzz(url: str, token: str, findings: Findings) -> None:
    """Run every operation's cases against url (blocking: call it in a thread)."""
    schema = schemathesis.openapi.from_url(url + "/openapi.json")
    session = requests.Session()
    for result in schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]
        fuzz_operation(operation, url, session, token, findings)


@pytest.fixture
async def gateway(plane: ControlPlane, node: FakeNode) -> AsyncIterator[tuple[str, str]]:
    """A gateway in front of the plane (one fake node), and a system token."""
    runner, url = await start_gateway(f"127.0.0.1:{plane.port}")
    async with (
        aiohttp.ClientSession() as session,
        session.post(url + "/auth", json={"namespace": "system", "key": SYSTEM_KEY}) as r,
    ):
        token = (await r.json())["access_token"]
    yield url, token
    await runner.cleanup()


@pytest.mark.timeout(300)
async def test_schema_valid_requests_are_never_500_or_malformed(
    gateway: tuple[str, str],
) -> None:
    """Fuzzed requests: no 500, 401 for every one without a token, no 400 for a valid one."""
    url, token = gateway
    findings = Findings()
    await asyncio.wait_for(asyncio.to_thread(fuzz, url, token, findings), 240)
    assert findings.calls > 100
    assert findings.problems == [], "\n".join(findings.problems[:40])
