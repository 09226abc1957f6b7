"""A control plane whose state lives in a real etcd (MINICLOUD_STORE=etcd:...).

It uses the session's etcd (tests/conftest.py) under a key prefix of its own,
with fake node agents.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import grpc
import pytest

from controlplane.app import start
from controlplane.settings import Settings
from protos import instances_pb2
from tests.component.conftest import create_request, make_api, plane_settings, start_fake_node
from tests.etcd_server import EtcdServer, etcd_or_skip, start_etcd

Ref = instances_pb2.InstanceRef


def etcd_settings(data_dir: Path, etcd: EtcdServer, prefix: bytes, port: int = 0) -> Settings:
    """Test settings with the store in etcd under prefix."""
    return dataclasses.replace(
        plane_settings(data_dir, port),
        store=f"etcd:http://{etcd.endpoint}",
        etcd_prefix=prefix.decode(),
    )


def on(instance: instances_pb2.Instance) -> bool:
    return instance.state == "created" and instance.power_state == "on"


async def test_create_list_get_on_etcd(
    tmp_path: Path, etcd: EtcdServer, etcd_prefix: bytes
) -> None:
    """Instances created on an etcd store are listed and read back, also by a new control plane.

    The second control plane has an empty data folder: everything it knows
    comes from etcd.
    """
    plane = await start(etcd_settings(tmp_path / "cp1", etcd, etcd_prefix))
    port = plane.port
    node = await start_fake_node(f"127.0.0.1:{port}")
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = await make_api(channel)
            uuids = [(await api.Create(create_request(f"vm{i}"))).uuid for i in range(3)]
            for uuid in uuids:
                await api.wait_for(uuid, on)
            listed = await api.List(instances_pb2.ListInstancesRequest())
            assert sorted(i.uuid for i in listed.instances) == sorted(uuids)
            got = await api.Get(Ref(ref="vm1"))
            assert got.uuid == uuids[1] and on(got)
        await plane.stop(0)
        plane = await start(etcd_settings(tmp_path / "cp2", etcd, etcd_prefix, port))
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            api = await make_api(channel)
            listed = await api.List(instances_pb2.ListInstancesRequest(), wait_for_ready=True)
            assert sorted(i.uuid for i in listed.instances) == sorted(uuids)
            assert all(on(i) for i in listed.instances)
            await api.Delete(Ref(ref="vm0"))
            await api.wait_for(uuids[0], lambda i: i.state == "deleted")
    finally:
        await node.close()
        await plane.stop(0)


async def test_unreachable_etcd_is_unavailable_not_internal(tmp_path: Path) -> None:
    """While etcd is down, calls that need the store answer UNAVAILABLE (retryable)."""
    etcd_or_skip()
    etcd = start_etcd(tmp_path / "etcd")
    plane = await start(
        dataclasses.replace(etcd_settings(tmp_path / "cp", etcd, b"/down/"), etcd_timeout=2.0)
    )
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
            api = await make_api(channel)
            await api.List(instances_pb2.ListInstancesRequest())
            etcd.stop()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await api.List(instances_pb2.ListInstancesRequest())
            assert err.value.code() == grpc.StatusCode.UNAVAILABLE
            assert "store is unavailable" in str(err.value.details())
    finally:
        etcd.stop()
        await plane.stop(0)
