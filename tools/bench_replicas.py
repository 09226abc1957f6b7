"""Replicas benchmark: one control plane on RocksDB, one on etcd, three on etcd, and failover.

Each configuration runs as real processes (tools/hacluster.py: TLS everywhere,
etcd on loopback with ``--unsafe-no-fsync``, two fake-hypervisor node
agents). For each it measures, in one run on this machine:

- creates accepted per second (``--creates`` creates from ``--threads``
  client threads, each with a client that knows every replica), and the
  end-to-end rate until every instance is ``created``;
- Get latency (sequential, p50 and p95) and the time of a whole paged List;

and with three replicas, failover: the leader is killed (kill -9) and the
time is taken to a new leader, to the first create accepted afterwards and
to every node connected again. Three replicas on a 2-core machine measure
contention, not scale-out: every replica, every etcd member, the node
agents and this load generator share the same two cores.

Prints a Markdown table and one JSON line (``--out FILE`` writes the JSON).

    .venv/bin/python tools/bench_replicas.py              # about 2 minutes
    .venv/bin/python tools/bench_replicas.py --creates 300 --threads 8
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import statistics
import sys
import threading
import time
from pathlib import Path
from typing import Any

from client.api import Client
from tools.cluster import wait_until
from tools.hacluster import HaCluster

NODES = ("bench-node-0", "bench-node-1")
JsonDict = dict[str, Any]


def spec(name: str) -> JsonDict:
    """A small instance for the fake hypervisor."""
    return {"name": name, "cpus": 1, "memory": 64, "disks": [{"size_gb": 1}]}


def connected(client: Client) -> int:
    """How many of the benchmark's nodes are connected."""
    return sum(1 for n in client.list_nodes() if n["name"] in NODES and n["state"] == "created")


def creates(cluster: HaCluster, count: int, threads: int, tag: str) -> JsonDict:
    """Accepted/s and end-to-end/s of count concurrent creates."""
    local = threading.local()
    made: list[str] = []
    lock = threading.Lock()
    turns = iter(range(threads))

    def one(index: int) -> None:
        if not hasattr(local, "client"):
            with lock:  # each thread starts at another replica: the load is spread
                turn = next(turns)
            local.client = cluster.client(timeout=60, first=turn)
        found = local.client.create(spec(f"{tag}-{index:05d}"))
        with lock:
            made.append(found["uuid"])

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(threads) as pool:
        list(pool.map(one, range(count)))
    accepted = time.perf_counter() - started
    with cluster.client() as client:

        def all_created() -> bool:
            states = [i["state"] for i in client.list_instances()]
            return sum(1 for s in states if s == "created") >= count

        wait_until(all_created, 600, "every create to finish", poll=0.5)
    total = time.perf_counter() - started
    return {"accepted_per_s": count / accepted, "end_to_end_per_s": count / total}


def reads(cluster: HaCluster, uuids: list[str], gets: int = 200, lists: int = 5) -> JsonDict:
    """Sequential Get latency and whole paged List time, in ms."""
    with cluster.client() as client:
        client.get(uuids[0])  # the token and the channel, before timing
        times = []
        for index in range(gets):
            started = time.perf_counter()
            client.get(uuids[index % len(uuids)])
            times.append((time.perf_counter() - started) * 1000)
        listed = []
        for _ in range(lists):
            started = time.perf_counter()
            client.list_instances()
            listed.append((time.perf_counter() - started) * 1000)
    times.sort()
    return {
        "get_p50_ms": statistics.median(times),
        "get_p95_ms": times[int(len(times) * 0.95) - 1],
        "list_ms": statistics.median(listed),
    }


def failover(cluster: HaCluster) -> JsonDict:
    """Seconds from kill -9 of the leader to a new leader, a create accepted, every node back."""
    leader = cluster.wait_leader()
    with cluster.client(timeout=30) as client:
        killed = time.perf_counter()
        cluster.kill(cluster.replicas[leader].name)
        client.create(spec("after-failover"), retry_for=60)
        first_create = time.perf_counter() - killed
        cluster.wait_leader(timeout=30)
        new_leader = time.perf_counter() - killed
        wait_until(lambda: connected(client) == len(NODES), 60, "every node to re-home")
        rehomed = time.perf_counter() - killed
    return {"new_leader_s": new_leader, "first_create_s": first_create, "rehomed_s": rehomed}


def measure(name: str, replicas: int, members: int, args: argparse.Namespace) -> JsonDict:
    """One configuration's figures."""
    cluster = HaCluster.launch(Path(args.root), replicas=replicas, members=members)
    try:
        for node in NODES:
            cluster.start_node(node)
        with cluster.client() as client:
            wait_until(lambda: connected(client) == len(NODES), 60, "the nodes to connect")
        result: JsonDict = {"name": name, "replicas": replicas, "etcd_members": members}
        result |= creates(cluster, args.creates, args.threads, f"r{replicas}e{members}")
        with cluster.client() as client:
            uuids = [i["uuid"] for i in client.list_instances()]
        result |= reads(cluster, uuids)
        if replicas > 1:
            result |= failover(cluster)
        return result
    except BaseException:
        print(cluster.logs(), file=sys.stderr)
        raise
    finally:
        cluster.shutdown()


def table(results: list[JsonDict]) -> str:
    """The figures as Markdown."""
    lines = [
        "| configuration | creates accepted/s | end to end/s | Get p50 / p95 ms | List ms |",
        "|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['accepted_per_s']:.0f} | {r['end_to_end_per_s']:.0f} | "
            f"{r['get_p50_ms']:.2f} / {r['get_p95_ms']:.2f} | {r['list_ms']:.1f} |"
        )
    for r in results:
        if "new_leader_s" in r:
            lines.append("")
            lines.append(
                f"Failover ({r['name']}, leader killed with kill -9): new leader after "
                f"{r['new_leader_s']:.2f} s, first create accepted after "
                f"{r['first_create_s']:.2f} s, every node re-homed after {r['rehomed_s']:.2f} s."
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--creates", type=int, default=500)
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--root", default="/var/tmp/mc-bench-replicas")
    parser.add_argument("--out", default="")
    args = parser.parse_args(argv)
    results = [
        measure("1 replica, RocksDB", 1, 0, args),
        measure("1 replica, etcd (3 members)", 1, 3, args),
        measure("3 replicas, etcd (3 members)", 3, 3, args),
    ]
    print(table(results))
    line = json.dumps({"creates": args.creates, "threads": args.threads, "results": results})
    print(line)
    if args.out:
        Path(args.out).write_text(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
