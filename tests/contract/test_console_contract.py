"""The hypervisor's console contract (ports, display passwords, console endpoint, screenshots,
usage), fake and real.

The libvirt half boots real QEMU guests (marked ``system``).
"""

from __future__ import annotations

import asyncio
import uuid as uuidlib

import pytest

from common.nodewire.domain import VideoRequest
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
    assert again.ports.ports() == a.ports()
    listed = {d.uuid: d.ports for d in await backend.hypervisor.list_domains()}
    assert listed[spec_a.uuid].ports() == a.ports()


async def test_display_password_is_set_at_first_start_and_new_at_every_power_on(
    backend: Backend,
) -> None:
    """A display has a password from its first start, a new one after off/on, and a restarted
    driver reads the current one back; a hard reboot keeps it."""
    spec, state = await backend.boot(video=VideoRequest(vdi="vnc"))
    first = state.ports.vdi_password
    assert len(first) == 8  # VNC's limit
    await backend.hypervisor.power(spec.uuid, "off")
    on = await backend.hypervisor.power(spec.uuid, "on")
    second = on.ports.vdi_password
    assert second and second != first
    rebooted = await backend.hypervisor.power(spec.uuid, "hard-reboot")
    assert rebooted.ports.vdi_password == second
    assert backend.reopen is not None
    reopened = backend.reopen()
    try:
        seen = await reopened.get_domain(spec.uuid)
        assert seen is not None and seen.ports.vdi_password == second
    finally:
        if reopened is not backend.hypervisor:
            await reopened.close()
    spice, spice_state = await backend.boot()
    assert len(spice_state.ports.vdi_password) > 8
    await backend.hypervisor.power(spice.uuid, "off")
    spice_on = await backend.hypervisor.power(spice.uuid, "on")
    assert spice_on.ports.vdi_password not in ("", spice_state.ports.vdi_password)


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
