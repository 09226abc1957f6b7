"""Helpers for system tests that use shakenfist-client against the REST gateway."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tools.cluster import Cluster, wait_until

HERE = Path(__file__).resolve().parent
EXAMPLES = HERE / "seed_examples"
SF_CLIENT = Path(sys.executable).parent / "sf-client"


def sf_env(cluster: Cluster, namespace: str = "system", key: str | None = None) -> dict[str, str]:
    """The process environment for shakenfist-client against the cluster."""
    return {**os.environ, **cluster.rest_env(namespace, key), "SHAKENFIST_ASYNC": "pause"}


def run_example(
    cluster: Cluster,
    name: str,
    *options: str,
    cwd: Path | None = None,
    timeout: float = 400,
) -> subprocess.CompletedProcess[str]:
    """Run a seed example through seed_run.py; returns the finished process."""
    return subprocess.run(
        [sys.executable, str(HERE / "seed_run.py"), str(EXAMPLES / name), *options],
        env=sf_env(cluster),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def sf_client(
    cluster: Cluster, *args: str, namespace: str = "system", key: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run the sf-client CLI against the cluster."""
    return subprocess.run(
        [str(SF_CLIENT), *args],
        env=sf_env(cluster, namespace, key),
        capture_output=True,
        text=True,
        timeout=400,
        check=False,
    )


def client(cluster: Cluster, namespace: str = "system", key: str | None = None) -> Any:
    """A shakenfist_client library client for the cluster."""
    from shakenfist_client import apiclient

    env = cluster.rest_env(namespace, key)
    if "REQUESTS_CA_BUNDLE" in env:
        # requests (under the client) reads it from the environment on each request;
        # every cluster of a test run is the current one while its module runs.
        os.environ["REQUESTS_CA_BUNDLE"] = env["REQUESTS_CA_BUNDLE"]
    return apiclient.Client(
        base_url=env["SHAKENFIST_API_URL"],
        namespace=namespace,
        key=env["SHAKENFIST_KEY"],
        suppress_configuration_lookup=True,
        async_strategy="pause",
    )


def wait_agent_ready(sf: Any, uuid: str, timeout: float = 180) -> dict[str, Any]:
    """Poll the instance until its agent is ready."""
    wait_until(
        lambda: str(sf.get_instance(uuid)["agent_state"]).startswith("ready"),
        timeout,
        f"the agent of {uuid} to be ready",
        poll=1,
    )
    found: dict[str, Any] = sf.get_instance(uuid)
    return found
