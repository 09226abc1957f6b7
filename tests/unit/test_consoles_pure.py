"""Pure console pieces: PNG encoding, port choice, console log tails, domain XML, display
passwords, virt-viewer files, usage shape."""

from __future__ import annotations

import random
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from common.nodewire.domain import DomainRequest, VideoRequest
from controlplane.services.consoles import vv_file
from nodeagent import consolelog
from nodeagent.hypervisor.console_ports import ConsolePorts, NoFreePort, new_password, pick_ports
from nodeagent.hypervisor.domain_xml import (
    build_domain_xml,
    graphics_with_new_password,
    parse_console_ports,
)
from nodeagent.hypervisor.protocol import DiskUsage, DomainUsage, NicUsage, PreparedDisk
from nodeagent.png import ImageError, check_png, ppm_to_png
from nodeagent.usage import usage_extra


def test_ppm_becomes_a_valid_png_of_the_same_size() -> None:
    """A P6 PPM (with a comment) converts to a PNG whose size and pixel data check out."""
    ppm = b"P6\n# from qemu\n3 2\n255\n" + bytes(range(18))
    assert check_png(ppm_to_png(ppm)) == (3, 2)
    with pytest.raises(ImageError):
        ppm_to_png(b"P5\n3 2\n255\n" + bytes(6))
    with pytest.raises(ImageError):
        ppm_to_png(b"P6\n3 2\n255\n" + bytes(5))


def test_ports_are_distinct_free_and_in_range() -> None:
    """Chosen ports avoid taken and busy ones, and running out is an error."""
    picked = pick_ports(3, [30000, 30001], lambda p: p != 30002, random.Random(1), 30000, 30005)
    assert len(set(picked)) == 3 and not {30000, 30001, 30002} & set(picked)
    with pytest.raises(NoFreePort):
        pick_ports(2, [30000], lambda p: True, low=30000, high=30001)


def test_console_log_tail_spans_rotated_files_and_clear_empties(tmp_path: Path) -> None:
    """Tails read across virtlogd's rotated files, oldest first; clearing removes them all."""
    log = tmp_path / "console.log"
    (tmp_path / "console.log.1").write_bytes(b"old-")
    (tmp_path / "console.log.0").write_bytes(b"mid-")
    log.write_bytes(b"new")
    assert consolelog.read_tail(log, -1) == b"old-mid-new"
    assert consolelog.read_tail(log, 6) == b"id-new"
    assert consolelog.read_tail(log, 2) == b"ew"
    with pytest.raises(ValueError):
        consolelog.read_tail(log, -2)
    consolelog.clear(log)
    assert consolelog.read_tail(log, -1) == b"" and log.exists()
    assert not (tmp_path / "console.log.0").exists()


def test_domain_xml_has_a_tcp_serial_console_and_fixed_display_ports(tmp_path: Path) -> None:
    """With ports, the serial console is a logged raw TCP server and SPICE has fixed ports."""
    spec = DomainRequest(uuid="0" * 8 + "-0000-0000-0000-" + "0" * 12, name="x")
    ports = ConsolePorts(31000, 31001, 31002)
    xml = build_domain_xml(
        spec,
        [PreparedDisk(tmp_path / "d.qcow2")],
        console_log=tmp_path / "console.log",
        domain_type="qemu",
        socket_dir=tmp_path,
        listen_address="10.0.0.5",
        ports=ports,
    )
    root = ET.fromstring(xml)
    serial = root.find("devices/serial[@type='tcp']")
    assert serial is not None
    source = serial.find("source")
    assert source is not None and source.attrib == {
        "mode": "bind",
        "host": "10.0.0.5",
        "service": "31000",
    }
    assert serial.find("protocol[@type='raw']") is not None
    assert serial.find("log") is not None
    graphics = root.find("devices/graphics")
    assert graphics is not None and graphics.get("autoport") == "no"
    assert (graphics.get("port"), graphics.get("tlsPort")) == ("31001", "31002")
    assert parse_console_ports(xml) == ports
    vnc = DomainRequest(uuid=spec.uuid, name="x", video=VideoRequest(vdi="vnc"))
    xml = build_domain_xml(
        vnc,
        [],
        console_log=tmp_path / "c.log",
        domain_type="qemu",
        socket_dir=tmp_path,
        ports=ports,
    )
    assert parse_console_ports(xml) == ConsolePorts(31000, 31001, 0)


def test_display_password_is_in_the_domain_xml_and_read_back(tmp_path: Path) -> None:
    """The display's password is its graphics' passwd attribute, and parsing gives it back."""
    ports = ConsolePorts(31000, 31001, 0, "s3cretPw")
    for vdi in ("vnc", "spice"):
        uuid = "0" * 8 + "-0000-0000-0000-" + "0" * 12
        spec = DomainRequest(uuid=uuid, name="x", video=VideoRequest(vdi=vdi))
        xml = build_domain_xml(
            spec,
            [],
            console_log=tmp_path / "c.log",
            domain_type="qemu",
            socket_dir=tmp_path,
            ports=ports,
        )
        graphics = ET.fromstring(xml).find("devices/graphics")
        assert graphics is not None and graphics.get("passwd") == "s3cretPw"
        assert parse_console_ports(xml).vdi_password == "s3cretPw"
    no_password = build_domain_xml(
        DomainRequest(uuid="1" * 8 + "-0000-0000-0000-" + "0" * 12, name="y"),
        [],
        console_log=tmp_path / "c.log",
        domain_type="qemu",
        socket_dir=tmp_path,
        ports=ConsolePorts(31000, 31001),
    )
    assert "passwd" not in no_password
    assert parse_console_ports(no_password).vdi_password == ""


def test_a_new_password_replaces_the_old_one_in_the_graphics_element(tmp_path: Path) -> None:
    """The graphics element for updateDeviceFlags keeps its ports and gets a fresh password."""
    spec = DomainRequest(
        uuid="0" * 8 + "-0000-0000-0000-" + "0" * 12, name="x", video=VideoRequest(vdi="vnc")
    )
    xml = build_domain_xml(
        spec,
        [],
        console_log=tmp_path / "c.log",
        domain_type="qemu",
        socket_dir=tmp_path,
        ports=ConsolePorts(31000, 31001, 0, "oldpassw"),
    )
    found = graphics_with_new_password(xml)
    assert found is not None
    element, password = found
    graphics = ET.fromstring(element)
    assert graphics.tag == "graphics" and graphics.get("type") == "vnc"
    assert graphics.get("port") == "31001" and graphics.find("listen") is not None
    assert graphics.get("passwd") == password != "oldpassw" and len(password) == 8
    assert graphics_with_new_password("<domain><devices/></domain>") is None


def test_passwords_are_random_and_vnc_ones_fit_its_eight_characters() -> None:
    """VNC passwords are 8 characters (all VNC uses), SPICE ones longer; none repeat."""
    vnc = {new_password("vnc") for _ in range(50)}
    assert len(vnc) == 50 and {len(p) for p in vnc} == {8}
    assert all(p.isalnum() for p in vnc)
    assert len(new_password("spice")) > 8 and len(new_password("spiceconcurrent")) > 8


def test_vv_file_carries_the_password_when_the_display_has_one() -> None:
    """The .vv file has a password= line for a display with a password, none without."""
    lines = vv_file("vnc", "10.0.0.5", 31001, 0, "x:%d - %s", "s3cretPw").splitlines()
    assert lines[:4] == ["[virt-viewer]", "type=vnc", "host=10.0.0.5", "port=31001"]
    assert "password=s3cretPw" in lines and "delete-this-file=1" in lines
    bare = vv_file("spice", "10.0.0.5", 31001, 31002, "x").splitlines()
    assert "tls-port=31002" in bare
    assert not any(line.startswith("password") for line in bare)


def test_usage_extra_has_shaken_fists_shape() -> None:
    """Usage counters become the seed's extra: cpu, disks by device, interfaces by MAC."""
    usage = DomainUsage(3, 2, 1, {"vda": DiskUsage(10, 1, 2, 3, 4, -1)}, {"02:00": NicUsage()})
    extra = usage_extra(usage)
    assert extra["cpu usage"] == {"cpu time ns": 3, "system time ns": 1, "user time ns": 2}
    assert extra["disk usage"]["vda"] == {
        "actual bytes on disk": 10,
        "errors": -1,
        "read bytes": 1,
        "read requests": 2,
        "write bytes": 3,
        "write requests": 4,
    }
    assert set(extra["network usage"]["02:00"]) == {
        "read bytes",
        "read drops",
        "read errors",
        "read packets",
        "write bytes",
        "write drops",
        "write errors",
        "write packets",
    }
