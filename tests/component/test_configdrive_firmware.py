"""Config drives and UEFI through the API, with a fake hypervisor and disk builder."""

from __future__ import annotations

import base64
import json
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2

from controlplane.app import ControlPlane
from protos import instances_pb2, metadata_pb2, metadata_pb2_grpc
from tests.component.conftest import Api, FakeNode, authed, create_request

Ref = instances_pb2.InstanceRef
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIComponentTestKey test@example"
USER_DATA = b"#cloud-config\nhostname: ignored\n"


def is_on(inst: instances_pb2.Instance) -> bool:
    return inst.state == "created" and inst.power_state == "on"


def meta_of(node: FakeNode, uuid: str) -> Any:
    """The meta_data.json the node last built for an instance."""
    return json.loads(node.disks.drives[uuid]["openstack/latest/meta_data.json"])


async def test_config_drive_is_built_and_attached_second(api: Api, node: FakeNode) -> None:
    """Create builds a drive with the key and user data and attaches it as the second disk."""
    request = create_request("cd1", ssh_key=KEY, user_data=base64.b64encode(USER_DATA).decode())
    inst = await api.wait_for((await api.Create(request)).uuid, is_on)
    meta = meta_of(node, inst.uuid)
    assert (meta["uuid"], meta["hostname"], meta["public_keys"]) == (
        inst.uuid,
        "cd1",
        {"mykey": KEY},
    )
    assert node.disks.drives[inst.uuid]["openstack/latest/user_data"] == USER_DATA
    disks = node.hypervisor.disks[inst.uuid]
    assert len(disks) == 2
    assert disks[1].path.name == "config.iso" and disks[1].readonly
    events = await api.GetEvents(instances_pb2.GetEventsRequest(ref=inst.uuid))
    assert any(e.message == "config drive built" for e in events.events)


async def test_no_config_drive_when_none(api: Api, node: FakeNode) -> None:
    """configdrive 'none' attaches only the instance's own disks."""
    inst = await api.wait_for(
        (await api.Create(create_request("nocd", configdrive="none"))).uuid, is_on
    )
    assert inst.uuid not in node.disks.drives
    assert len(node.hypervisor.disks[inst.uuid]) == 1


async def test_power_on_rebuilds_the_drive_with_changes(
    api: Api, node: FakeNode, plane: ControlPlane
) -> None:
    """Power off, set metadata, power on: the drive is rebuilt and holds the change."""
    inst = await api.wait_for((await api.Create(create_request("cd2"))).uuid, is_on)
    first_seed = meta_of(node, inst.uuid)["random_seed"]
    assert "meta" not in meta_of(node, inst.uuid)
    await api.PowerOff(Ref(ref=inst.uuid))
    await api.wait_for(inst.uuid, lambda i: i.power_state == "off")
    # A change made while off, through the metadata API.
    async with grpc.aio.insecure_channel(f"127.0.0.1:{plane.port}") as channel:
        metadata = await authed(metadata_pb2_grpc.MetadataServiceStub, channel)
        await metadata.Set(
            metadata_pb2.SetMetadataRequest(
                object_type="instance",
                ref=inst.uuid,
                key="role",
                value=struct_pb2.Value(string_value="db"),
            )
        )
    await api.PowerOn(Ref(ref=inst.uuid))
    await api.wait_for(inst.uuid, is_on)
    meta = meta_of(node, inst.uuid)
    assert meta["meta"] == {"role": "db"}
    assert meta["random_seed"] != first_seed
    assert node.disks.drive_builds[inst.uuid] == 2


async def test_other_power_actions_leave_the_drive(api: Api, node: FakeNode) -> None:
    """Pause, unpause and reboots do not rebuild the drive."""
    inst = await api.wait_for((await api.Create(create_request("cd3"))).uuid, is_on)
    await api.Pause(Ref(ref=inst.uuid))
    await api.wait_for(inst.uuid, lambda i: i.power_state == "paused")
    await api.Unpause(Ref(ref=inst.uuid))
    await api.wait_for(inst.uuid, is_on)
    await api.HardReboot(Ref(ref=inst.uuid))
    assert node.disks.drive_builds[inst.uuid] == 1


async def test_machine_type_is_reported(api: Api, node: FakeNode) -> None:
    """Instances report q35 for secure boot and pc otherwise."""
    plain = await api.Create(create_request("pc1"))
    secure = await api.Create(create_request("sb1", uefi=True, secure_boot=True))
    assert plain.machine_type == "pc"
    assert (await api.Get(Ref(ref=secure.uuid))).machine_type == "q35"
    await api.wait_for(secure.uuid, is_on)
    domain = node.hypervisor.specs[secure.uuid]
    assert domain.uefi and domain.secure_boot


async def test_nvram_template_reaches_the_hypervisor_as_a_file(api: Api, node: FakeNode) -> None:
    """An NVRAM template in the OVMF folder is handed to the hypervisor as that file."""
    template = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
    inst = await api.Create(create_request("nv1", uefi=True, nvram_template=template))
    await api.wait_for(inst.uuid, is_on)
    assert node.hypervisor.specs[inst.uuid].nvram_template == template


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"secure_boot": True}, "secure boot requires UEFI be enabled"),
        ({"nvram_template": "/usr/share/OVMF/OVMF_VARS_4M.fd"}, "requires UEFI"),
        ({"user_data": "not base64!"}, "base64"),
        ({"configdrive": "floppy"}, "configdrive"),
    ],
)
async def test_bad_firmware_and_drive_requests_are_refused(
    api: Api, node: FakeNode, overrides: dict[str, Any], words: str
) -> None:
    """Secure boot without UEFI, stray templates, bad user data and unknown drives are refused."""
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await api.Create(create_request("bad", **overrides))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in (info.value.details() or "")
