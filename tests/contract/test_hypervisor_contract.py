"""The hypervisor contract, run against FakeHypervisor and LibvirtHypervisor.

See nodeagent/hypervisor/protocol.py for the semantics checked here. The
libvirt half boots real QEMU guests (marked ``system``).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid as uuidlib
from collections.abc import Iterator

import pytest

from common.nodewire.domain import NicRequest
from common.nodewire.power import POWER_ACTIONS, POWER_TRANSITIONS, target_of
from nodeagent.hypervisor.protocol import DomainNotFound, HypervisorError
from tests.contract.conftest import Backend, next_event

EVENT_TIMEOUT = 20.0
CRASH = "<crash>"

# A path through every allowed (state, action) pair; CRASH kills the guest's process.
WALK: list[tuple[str, str]] = [
    ("pause", "paused"),
    ("unpause", "on"),
    ("soft-reboot", "on"),
    ("hard-reboot", "on"),
    ("pause", "paused"),
    ("hard-reboot", "on"),
    ("pause", "paused"),
    ("off", "off"),
    ("on", "on"),
    ("off", "off"),
    ("on", "on"),
    (CRASH, "crashed"),
    ("on", "on"),
    (CRASH, "crashed"),
    ("hard-reboot", "on"),
    (CRASH, "crashed"),
    ("off", "off"),
]


def test_walk_covers_every_allowed_transition() -> None:
    """The walk below exercises every (state, action) pair the transition table allows."""
    state, covered = "on", set()
    for action, expected in WALK:
        if action != CRASH:
            assert target_of(action, state) == expected
            covered.add((state, action))
        state = expected
    allowed = {(s, a) for a, (froms, _) in POWER_TRANSITIONS.items() for s in froms}
    assert covered == allowed


async def test_define_and_start_returns_on_and_is_idempotent(backend: Backend) -> None:
    """A new domain comes up on, and defining it again leaves it running and listed."""
    spec, state = await backend.boot()
    assert (state.uuid, state.power_state) == (spec.uuid, "on")
    again = await backend.hypervisor.define_and_start(
        spec, backend.disks_for(spec), backend.console_log(spec)
    )
    assert again.power_state == "on"
    current = await backend.hypervisor.get_domain(spec.uuid)
    assert current is not None and current.power_state == "on"
    listed = {d.uuid: d.power_state for d in await backend.hypervisor.list_domains()}
    assert listed.get(spec.uuid) == "on"


async def test_define_without_start_stays_off_until_powered_on(backend: Backend) -> None:
    """A domain defined with start=False is off (with its console ports), and powers on."""
    spec = backend.new_spec()
    backend.console_log(spec).parent.mkdir(parents=True, exist_ok=True)
    state = await backend.hypervisor.define_and_start(
        spec, backend.disks_for(spec), backend.console_log(spec), start=False
    )
    assert state.power_state == "off" and state.ports.console_port
    listed = {d.uuid: d.power_state for d in await backend.hypervisor.list_domains()}
    assert listed.get(spec.uuid) == "off"
    assert (await backend.hypervisor.power(spec.uuid, "on")).power_state == "on"
    again = await backend.hypervisor.define_and_start(
        spec, backend.disks_for(spec), backend.console_log(spec), start=False
    )
    assert again.power_state == "on"


@pytest.mark.timeout(1200)
async def test_every_allowed_action_and_every_refusal(backend: Backend) -> None:
    """Each allowed action reaches its state and every other action is refused, unretryably."""
    hypervisor = backend.hypervisor
    events = hypervisor.events()
    spec, state = await backend.boot()
    uuid = spec.uuid
    assert state.power_state == "on"
    current = "on"
    for action, expected in WALK:
        for refused in POWER_ACTIONS:
            if target_of(refused, current) is not None:
                continue
            with pytest.raises(HypervisorError) as caught:
                await hypervisor.power(uuid, refused)
            assert not isinstance(caught.value, DomainNotFound)
            assert caught.value.retryable is False, f"{refused} from {current}"
        if action == CRASH:
            backend.external_crash(uuid)
            event = await next_event(
                events, lambda e: e.uuid == uuid and e.power_state == "crashed", EVENT_TIMEOUT
            )
            assert event.reason
        else:
            result = await hypervisor.power(uuid, action)
            assert (result.uuid, result.power_state) == (uuid, expected), f"{action} from {current}"
        observed = await hypervisor.get_domain(uuid)
        assert observed is not None and observed.power_state == expected, f"after {action}"
        current = expected


async def test_unknown_uuid_raises_domain_not_found(backend: Backend) -> None:
    """Every power action on a domain that does not exist raises DomainNotFound."""
    uuid = str(uuidlib.uuid4())
    assert await backend.hypervisor.get_domain(uuid) is None
    for action in POWER_ACTIONS:
        with pytest.raises(DomainNotFound):
            await backend.hypervisor.power(uuid, action)


@pytest.mark.system
@pytest.mark.parametrize("backend", ["libvirt"], indirect=True)
async def test_libvirt_calls_are_timed_by_call(backend: Backend) -> None:
    """Each blocking libvirt call is timed by its name, a failing one too."""
    from nodeagent.hypervisor.libvirt_driver import LibvirtHypervisor

    driver = backend.hypervisor
    assert isinstance(driver, LibvirtHypervisor) and driver.metrics is not None
    await driver.list_domains()
    with pytest.raises(DomainNotFound):
        await driver.power(str(uuidlib.uuid4()), "off")
    text = (await driver.metrics.registry.render()).decode()
    assert 'minicloud_libvirt_call_duration_seconds_count{call="list"}' in text
    assert 'minicloud_libvirt_call_duration_seconds_count{call="power"} 1.0' in text


async def test_unknown_action_is_refused(backend: Backend) -> None:
    """An action outside POWER_ACTIONS raises a HypervisorError that is not retryable."""
    with pytest.raises(HypervisorError) as caught:
        await backend.hypervisor.power(str(uuidlib.uuid4()), "explode")
    assert caught.value.retryable is False


async def test_remove_is_idempotent_and_the_domain_disappears(backend: Backend) -> None:
    """Removing a running domain twice works, and it is gone from get and list afterwards."""
    spec, _ = await backend.boot()
    await backend.hypervisor.remove(spec.uuid)
    await backend.hypervisor.remove(spec.uuid)
    assert await backend.hypervisor.get_domain(spec.uuid) is None
    assert spec.uuid not in {d.uuid for d in await backend.hypervisor.list_domains()}
    with pytest.raises(DomainNotFound):
        await backend.hypervisor.power(spec.uuid, "on")
    await backend.hypervisor.remove(str(uuidlib.uuid4()))


async def test_external_destroy_is_reported_and_define_and_start_restarts(
    backend: Backend,
) -> None:
    """A destroy behind the driver's back yields an off event, and define_and_start revives it."""
    events = backend.hypervisor.events()
    spec, _ = await backend.boot()
    backend.external_destroy(spec.uuid)
    event = await next_event(
        events, lambda e: e.uuid == spec.uuid and e.power_state == "off", EVENT_TIMEOUT
    )
    assert event.reason == "destroyed"
    current = await backend.hypervisor.get_domain(spec.uuid)
    assert current is not None and current.power_state == "off"
    state = await backend.hypervisor.define_and_start(
        spec, backend.disks_for(spec), backend.console_log(spec)
    )
    assert state.power_state == "on"
    await next_event(events, lambda e: e.uuid == spec.uuid and e.power_state == "on", EVENT_TIMEOUT)


async def test_define_and_start_unpauses_a_paused_domain(backend: Backend) -> None:
    """define_and_start on a paused domain makes it run again."""
    spec, _ = await backend.boot()
    await backend.hypervisor.power(spec.uuid, "pause")
    state = await backend.hypervisor.define_and_start(
        spec, backend.disks_for(spec), backend.console_log(spec)
    )
    assert state.power_state == "on"


async def test_events_end_after_close(backend: Backend) -> None:
    """close() ends the events() stream."""
    events = backend.hypervisor.events()
    await backend.hypervisor.close()
    remaining = [event async for event in events]
    assert all(event.uuid for event in remaining)


@pytest.fixture
def bridges() -> Iterator[list[str]]:
    """Two empty Linux bridges made for the test (libvirt needs real ones), removed after."""
    names = [f"mcct{uuidlib.uuid4().hex[:6]}" for _ in range(2)]
    if os.geteuid() == 0 and shutil.which("ip"):
        for name in names:
            subprocess.run(["ip", "link", "add", name, "type", "bridge"], check=True)
            subprocess.run(["ip", "link", "set", name, "up"], check=True)
    try:
        yield names
    finally:
        for name in names:
            subprocess.run(["ip", "link", "del", name], capture_output=True, check=False)


async def test_interfaces_are_built_and_hot_plugged(backend: Backend, bridges: list[str]) -> None:
    """A domain gets its NICs in order; a hot-plugged NIC is live and persistent, once."""
    first = NicRequest("i0", "n0", "02:00:00:00:00:01", model="virtio", order=0, bridge=bridges[0])
    spec, _ = await backend.boot(interfaces=(first,))
    assert backend.macs(spec.uuid) == (["02:00:00:00:00:01"], ["02:00:00:00:00:01"])
    plugged = NicRequest(
        "i1", "n1", "02:00:00:00:00:02", model="virtio", order=1, bridge=bridges[1]
    )
    await backend.hypervisor.attach_interface(spec.uuid, plugged)
    await backend.hypervisor.attach_interface(spec.uuid, plugged)
    both = ["02:00:00:00:00:01", "02:00:00:00:00:02"]
    assert backend.macs(spec.uuid) == (both, both)
    with pytest.raises(DomainNotFound):
        await backend.hypervisor.attach_interface(str(uuidlib.uuid4()), plugged)
