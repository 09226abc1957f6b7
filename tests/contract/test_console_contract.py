"""The hypervisor's console contract (ports, console endpoint, screenshots, usage), fake and real.

The libvirt half boots real QEMU guests (marked ``system``).
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib

import pytest

from nodeagent.hypervisor.console_ports import PORT_MAX, PORT_MIN
from nodeagent.hypervisor.protocol import DomainNotFound
from nodeagent.png import PNG_SIGNATURE, check_png
from tests.contract.conftest import Backend


def _in_range(port: int) -> bool:
    return PORT_MIN <= port <= PORT_MAX


async def test_domains_get_distinct_console_ports_that_survive_power_cycles(
    backend: Backend,
) -> None:
    """Each domain has its own serial and display port in 30000-50000, kept across off/on."""
    spec_a, state_a = await backend.boot()
    _, state_b = await backend.boot(video=spec_a.video.__class__(vdi="vnc"))
    a, b = state_a.ports, state_b.ports
    assert all(_in_range(p) for p in (a.console_port, a.vdi_port, b.console_port, b.vdi_port))
    assert len({a.console_port, a.vdi_port, b.console_port, b.vdi_port}) == 4
    assert a.vdi_tls_port == 0  # no SPICE TLS configured here
    await backend.hypervisor.power(spec_a.uuid, "off")
    again = await backend.hypervisor.power(spec_a.uuid, "on")
    assert again.ports == a
    listed = {d.uuid: d.ports for d in await backend.hypervisor.list_domains()}
    assert listed[spec_a.uuid] == a


async def test_serial_console_endpoint_accepts_a_connection(backend: Backend) -> None:
    """The console endpoint is the domain's TCP serial console, and it accepts a client."""
    spec, state = await backend.boot()
    host, port = await backend.hypervisor.console_endpoint(spec.uuid)
    assert port == state.ports.console_port
    _reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 10)
    writer.write(b"\r\n")
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    with pytest.raises(DomainNotFound):
        await backend.hypervisor.console_endpoint(str(uuidlib.uuid4()))


async def test_screenshot_is_a_png_of_the_display(backend: Backend) -> None:
    """A screenshot is a well-formed PNG whose pixel data matches its header's size."""
    spec, _ = await backend.boot()
    png = await backend.hypervisor.screenshot(spec.uuid)
    assert png.startswith(PNG_SIGNATURE)
    width, height = check_png(png)
    assert width >= 320 and height >= 200


async def test_usage_counts_cpu_and_disks_of_running_domains(backend: Backend) -> None:
    """Usage names every running domain, with growing CPU time and per-disk counters."""
    spec, _ = await backend.boot()
    first = (await backend.hypervisor.usage())[spec.uuid]
    await asyncio.sleep(1.5)
    second = (await backend.hypervisor.usage())[spec.uuid]
    assert 0 < first.cpu_time_ns < second.cpu_time_ns
    assert second.user_time_ns >= 0 and second.system_time_ns >= 0
    assert set(second.disks) == {"vda"}
    vda = second.disks["vda"]
    assert vda.actual_bytes > 0 and vda.read_bytes > 0 and vda.read_requests > 0
    assert isinstance(vda.errors, int)
    await backend.hypervisor.power(spec.uuid, "off")
    assert spec.uuid not in await backend.hypervisor.usage()
