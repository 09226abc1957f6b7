"""Config drives and UEFI firmware in real guests (libvirtd, QEMU under TCG, OVMF)."""

from __future__ import annotations

import base64
import json
import xml.etree.ElementTree as ET

import grpc
import pytest

from client.api import Client, JsonDict
from tests.system.conftest import Cluster, small_spec, virsh, wait_until

pytestmark = pytest.mark.system

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAISystemTestKeyForConfigDrive test@minicloud"
USER_DATA = b"#!/bin/sh\necho config drive user data\n"
MOUNT = "mkdir -p /mnt/cd && mount -o ro {dev} /mnt/cd"
READ = "cat /mnt/cd/openstack/latest/{name}"


def agent_ready(api: Client, uuid: str, boot_time: float = 0) -> JsonDict:
    """Wait until the instance's agent is ready (after a boot newer than boot_time)."""
    return api.wait(
        uuid,
        lambda i: (
            i["state"] == "error"
            or (i["agent_state"] == "ready" and i.get("agent_system_boot_time", 0) != boot_time)
        ),
        timeout=240,
    )


def run(api: Client, uuid: str, command: str) -> str:
    """Run a command in the guest and return its stdout; it must succeed."""
    op = api.wait_operation(api.execute(uuid, command)["uuid"], timeout=120)
    assert op["state"] == "complete", op
    result = op["results"]["0"]
    assert result["return-code"] == 0, result
    return str(result["stdout"])


def read_drive(api: Client, uuid: str, dev: str) -> tuple[JsonDict, str, JsonDict]:
    """Mount the drive in the guest: its meta data, user data and network data."""
    run(api, uuid, MOUNT.format(dev=dev))
    try:
        meta = json.loads(run(api, uuid, READ.format(name="meta_data.json")))
        user = run(api, uuid, READ.format(name="user_data"))
        network = json.loads(run(api, uuid, READ.format(name="network_data.json")))
    finally:
        run(api, uuid, "umount /mnt/cd")
    return meta, user, network


def test_guest_reads_its_config_drive_and_power_on_rebuilds_it(cluster: Cluster) -> None:
    """The guest mounts vdb (config-2) and finds itself; metadata set while off shows after on."""
    with cluster.client() as api:
        spec = small_spec("cdguest", ssh_key=KEY, user_data=base64.b64encode(USER_DATA).decode())
        uuid = api.create(spec)["uuid"]
        inst = agent_ready(api, uuid)
        assert inst["agent_state"] == "ready", cluster.logs()

        meta, user, network = read_drive(api, uuid, "/dev/vdb")
        assert (meta["uuid"], meta["hostname"], meta["name"]) == (uuid, "cdguest", "cdguest")
        assert meta["public_keys"] == {"mykey": KEY}
        assert user == USER_DATA.decode()
        assert network == {"links": [], "networks": [], "services": []}
        # cloud-init finds the drive by its label; so does mount (libblkid).
        run(api, uuid, MOUNT.format(dev="LABEL=config-2"))
        assert "vdb" in run(api, uuid, "grep /mnt/cd /proc/mounts")
        run(api, uuid, "umount /mnt/cd")

        drive = cluster.node_dir / "instances" / uuid / "config.iso"
        first_build = drive.stat().st_mtime_ns
        assert "meta" not in meta
        api.power(uuid, "off")
        api.wait(uuid, lambda i: i["power_state"] == "off", timeout=60)
        api.set_metadata("instance", uuid, "role", "database")
        api.set_metadata("instance", uuid, "tags", ["db", "primary"])
        api.power(uuid, "on")
        again = agent_ready(api, uuid, inst["agent_system_boot_time"])
        assert again["agent_state"] == "ready", cluster.logs()
        assert drive.stat().st_mtime_ns > first_build

        rebuilt, user_after, _ = read_drive(api, uuid, "/dev/vdb")
        assert rebuilt["uuid"] == uuid and user_after == USER_DATA.decode()
        assert rebuilt["random_seed"] != meta["random_seed"]
        assert rebuilt["meta"] == {"role": "database", "tags": '["db", "primary"]'}
        messages = [e["message"] for e in api.events(uuid)]
        assert messages.count("config drive built") == 2
        api.delete(uuid)


def test_no_config_drive_means_no_second_disk(cluster: Cluster) -> None:
    """configdrive 'none' defines a domain with only the instance's own disk."""
    with cluster.client() as api:
        uuid = api.create(small_spec("nocd", configdrive="none", side_channels=[]))["uuid"]
        api.wait(uuid, lambda i: i["state"] in ("created", "error"), timeout=180)
        xml = ET.fromstring(virsh("dumpxml", f"mc-{uuid}").stdout)
        assert len(xml.findall("devices/disk")) == 1
        assert not (cluster.node_dir / "instances" / uuid / "config.iso").exists()
        api.delete(uuid)


def test_uefi_instance_boots_through_ovmf(cluster: Cluster) -> None:
    """A uefi instance runs OVMF, whose boot manager writes to the serial console."""
    with cluster.client() as api:
        inst = api.create(small_spec("uefi", uefi=True, side_channels=[]))
        uuid = inst["uuid"]
        assert inst["machine_type"] == "pc"
        done = api.wait(uuid, lambda i: i["state"] in ("created", "error"), timeout=180)
        assert done["state"] == "created", cluster.logs()
        # Our image boots through an MBR, which OVMF (no CSM) cannot start:
        # its boot manager says so on the console, which is all we need.
        wait_until(lambda: "BdsDxe" in cluster.console(uuid), 180, "OVMF output on the console")
        nvram = cluster.node_dir / "instances" / uuid / "nvram.fd"
        assert nvram.exists()
        xml = ET.fromstring(virsh("dumpxml", f"mc-{uuid}").stdout)
        assert xml.findtext("os/loader", "").endswith("OVMF_CODE_4M.fd")
        api.delete(uuid)
        api.wait(uuid, lambda i: i["state"] == "deleted", timeout=60)
        assert not nvram.exists()


def test_secure_boot_uses_q35_and_the_secure_loader(cluster: Cluster) -> None:
    """A secure-boot instance is a q35 machine with SMM, the secboot OVMF and enrolled keys."""
    with cluster.client() as api:
        inst = api.create(small_spec("sboot", uefi=True, secure_boot=True, side_channels=[]))
        uuid = inst["uuid"]
        assert inst["machine_type"] == "q35"
        done = api.wait(uuid, lambda i: i["state"] in ("created", "error"), timeout=180)
        assert done["state"] == "created", cluster.logs()
        xml = ET.fromstring(virsh("dumpxml", f"mc-{uuid}").stdout)
        os_type = xml.find("os/type")
        loader = xml.find("os/loader")
        nvram = xml.find("os/nvram")
        assert os_type is not None and "q35" in os_type.get("machine", "")
        assert loader is not None and loader.get("secure") == "yes"
        assert (loader.text or "").endswith("OVMF_CODE_4M.secboot.fd")
        assert nvram is not None and nvram.get("template", "").endswith("OVMF_VARS_4M.ms.fd")
        smm = xml.find("features/smm")
        assert smm is not None and smm.get("state") == "on"
        wait_until(lambda: "BdsDxe" in cluster.console(uuid), 180, "OVMF output on the console")
        api.delete(uuid)


def test_secure_boot_without_uefi_is_refused(cluster: Cluster) -> None:
    """secure_boot without uefi is INVALID_ARGUMENT, with the reason."""
    with cluster.client() as api, pytest.raises(grpc.RpcError) as info:
        api.create(small_spec("nouefi", secure_boot=True))
    error = info.value
    assert isinstance(error, grpc.Call)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "secure boot requires UEFI be enabled" in (error.details() or "")
