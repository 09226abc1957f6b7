"""REST gateway overhead: the same Get and List through REST and through gRPC, in one run.

Starts a control plane (``minicloud-controlplane``, RocksDB) and the gateway
(``python -m gateway``) as processes on 127.0.0.1, attaches a fake
node agent just long enough to create ``--instances`` instances, then measures
from one load-generator process:

* sequential Get of one instance by UUID, ``--gets`` times: gRPC stub vs HTTP
  ``GET /instances/<uuid>`` (one keep-alive connection each);
* sequential List of every instance, ``--lists`` times: gRPC vs ``GET /instances``;
* Get throughput with ``--concurrency`` requests in flight.

For each: requests per second, p50 and p99 in ms; the gateway's added latency
is REST p50 minus gRPC p50. Both paths carry a token of the system namespace
(the control plane is started with a fresh system key).

    .venv/bin/python tools/bench_gateway.py            # about 1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from common import logs
from nodeagent.app import build
from nodeagent.blobclient import GrpcBlobs
from nodeagent.credentials import Credentials
from nodeagent.disks.fake import FakeDiskBuilder
from nodeagent.hypervisor.fake import FakeHypervisor
from nodeagent.settings import Settings as NodeSettings
from protos import auth_pb2, auth_pb2_grpc, instances_pb2, instances_pb2_grpc
from tools.cluster import free_port

BIN = Path(sys.executable).parent
JsonDict = dict[str, Any]


def percentile(ordered: list[float], pct: float) -> float:
    """The pct-th percentile of sorted samples."""
    index = min(len(ordered) - 1, max(0, round(pct / 100 * (len(ordered) - 1))))
    return ordered[index]


async def sequential(call: Callable[[], Awaitable[Any]], count: int) -> JsonDict:
    """Latency of count calls one after another (after a short warm-up)."""
    for _ in range(min(50, count)):
        await call()
    samples = []
    started = time.perf_counter()
    for _ in range(count):
        t = time.perf_counter()
        await call()
        samples.append((time.perf_counter() - t) * 1000)
    elapsed = time.perf_counter() - started
    samples.sort()
    return {
        "calls": count,
        "rps": round(count / elapsed, 1),
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
    }


async def concurrent(call: Callable[[], Awaitable[Any]], count: int, width: int) -> JsonDict:
    """Throughput of count calls with width in flight."""
    samples: list[float] = []
    remaining = count

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            t = time.perf_counter()
            await call()
            samples.append((time.perf_counter() - t) * 1000)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(width)))
    elapsed = time.perf_counter() - started
    samples.sort()
    return {
        "calls": len(samples),
        "concurrency": width,
        "rps": round(len(samples) / elapsed, 1),
        "p50_ms": round(percentile(samples, 50), 3),
        "p99_ms": round(percentile(samples, 99), 3),
    }


def wait_port(port: int, timeout: float = 20) -> None:
    """Wait until something listens on 127.0.0.1:port."""
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"nothing listens on port {port}")


async def populate(
    target: str, instances: int, metadata: tuple[tuple[str, str], ...], key: str
) -> str:
    """Create instances through a short-lived fake node; returns one instance's UUID."""
    data_dir = Path(tempfile.mkdtemp(prefix="mcb-", dir="/tmp"))
    settings = NodeSettings(
        control_plane=target,
        name="bench-node",
        data_dir=data_dir,
        hypervisor="fake",
        cpus=4096,
        memory_mb=1 << 30,
        key=key,
        usage_interval=0,
        metrics_listen="",
    )
    hypervisor = FakeHypervisor()
    agent = build(
        settings, hypervisor, FakeDiskBuilder(), GrpcBlobs(target, Credentials("system", key))
    )
    stop = asyncio.Event()
    running = asyncio.create_task(agent.run(stop))
    await asyncio.wait_for(agent.stream.connected.wait(), 20)
    async with grpc.aio.insecure_channel(target) as channel:
        stub = instances_pb2_grpc.InstanceServiceStub(channel)
        first = ""
        for n in range(instances):
            spec = {"name": f"b{n}", "cpus": 1, "memory": 64, "disks": [{"size_gb": 1}]}
            request = instances_pb2.CreateInstanceRequest(spec=spec)  # type: ignore[arg-type]
            inst = await stub.Create(request, metadata=metadata)
            first = first or inst.uuid
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            found = await stub.List(instances_pb2.ListInstancesRequest(), metadata=metadata)
            if all(i.state == "created" for i in found.instances):
                break
            await asyncio.sleep(0.2)
    stop.set()
    await running
    shutil.rmtree(data_dir, ignore_errors=True)
    return first


async def measure(args: argparse.Namespace, api: str, rest: str) -> JsonDict:
    async with grpc.aio.insecure_channel(api) as channel:
        token = await auth_pb2_grpc.AuthServiceStub(channel).Token(
            auth_pb2.TokenRequest(namespace="system", key=args.key)
        )
        auth = (("authorization", f"Bearer {token.access_token}"),)
        uuid = await populate(api, args.instances, auth, args.key)
        stub = instances_pb2_grpc.InstanceServiceStub(channel)
        ref = instances_pb2.InstanceRef(ref=uuid)
        list_request = instances_pb2.ListInstancesRequest()
        headers = {"Authorization": auth[0][1]}
        connector = aiohttp.TCPConnector(limit=args.concurrency)
        async with aiohttp.ClientSession(rest, headers=headers, connector=connector) as http:

            async def rest_get() -> Any:
                async with http.get(f"/instances/{uuid}") as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            async def rest_list() -> Any:
                async with http.get("/instances", json={"all": False}) as r:
                    assert r.status == 200, await r.text()
                    return await r.json()

            async def grpc_get() -> Any:
                return await stub.Get(ref, metadata=auth)

            async def grpc_list() -> Any:
                return await stub.List(list_request, metadata=auth)

            assert len(await rest_list()) == args.instances
            results: JsonDict = {}
            results["get_grpc"] = await sequential(grpc_get, args.gets)
            results["get_rest"] = await sequential(rest_get, args.gets)
            results["list_grpc"] = await sequential(grpc_list, args.lists)
            results["list_rest"] = await sequential(rest_list, args.lists)
            results["get_grpc_concurrent"] = await concurrent(grpc_get, args.gets, args.concurrency)
            results["get_rest_concurrent"] = await concurrent(rest_get, args.gets, args.concurrency)
    results["get_added_p50_ms"] = round(
        results["get_rest"]["p50_ms"] - results["get_grpc"]["p50_ms"], 3
    )
    results["list_added_p50_ms"] = round(
        results["list_rest"]["p50_ms"] - results["list_grpc"]["p50_ms"], 3
    )
    return results


def main() -> None:
    """Start the processes, measure, print a table and a JSON line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instances", type=int, default=100)
    parser.add_argument("--gets", type=int, default=3000)
    parser.add_argument("--lists", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    args.key = secrets.token_urlsafe(16)
    logs.configure(level=logging.WARNING)

    work = Path(tempfile.mkdtemp(prefix="mc-bench-gw-"))
    api_port, rest_port = free_port(), free_port()
    env = {**os.environ, "MINICLOUD_LOG_JSON": "1"}
    procs = []
    try:
        procs.append(
            subprocess.Popen(
                [str(BIN / "minicloud-controlplane")],
                env={
                    **env,
                    "MINICLOUD_LISTEN": f"127.0.0.1:{api_port}",
                    "MINICLOUD_METRICS_LISTEN": "127.0.0.1:0",
                    "MINICLOUD_DATA_DIR": str(work / "cp"),
                    "MINICLOUD_NAME": "bench-cp",
                    "MINICLOUD_SYSTEM_KEY": args.key,
                },
                stdout=subprocess.DEVNULL,
                stderr=open(work / "controlplane.log", "wb"),  # noqa: SIM115
            )
        )
        procs.append(
            subprocess.Popen(
                [sys.executable, "-m", "gateway"],
                env={
                    **env,
                    "MINICLOUD_GATEWAY_LISTEN": f"127.0.0.1:{rest_port}",
                    "MINICLOUD_GATEWAY_METRICS_LISTEN": "127.0.0.1:0",
                    "MINICLOUD_GATEWAY_API": f"127.0.0.1:{api_port}",
                },
                stdout=subprocess.DEVNULL,
                stderr=open(work / "gateway.log", "wb"),  # noqa: SIM115
            )
        )
        wait_port(api_port)
        wait_port(rest_port)
        results = asyncio.run(
            measure(args, f"127.0.0.1:{api_port}", f"http://127.0.0.1:{rest_port}")
        )
    finally:
        for proc in procs:
            proc.terminate()
            proc.wait(10)
        shutil.rmtree(work, ignore_errors=True)

    print(f"instances stored: {args.instances}; load generator: one process, aiohttp and grpc.aio")
    print("| call | path | requests/s | p50 ms | p99 ms |")
    print("|---|---|---|---|---|")
    for key, label in (
        ("get", "Get (sequential)"),
        ("list", f"List of {args.instances} (sequential)"),
        ("get_", f"Get ({args.concurrency} in flight)"),
    ):
        for path in ("grpc", "rest"):
            name = f"{key}_{path}" if key != "get_" else f"get_{path}_concurrent"
            r = results[name]
            print(f"| {label} | {path} | {r['rps']} | {r['p50_ms']} | {r['p99_ms']} |")
    print(
        f"gateway adds at p50: Get {results['get_added_p50_ms']} ms, "
        f"List {results['list_added_p50_ms']} ms (goal: under 1 ms)"
    )
    line = json.dumps(results)
    print(line)
    if args.out:
        args.out.write_text(line + "\n")


if __name__ == "__main__":
    main()
