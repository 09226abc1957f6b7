"""The node agent's error tree: one base with ``retryable`` under every error it defines."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import nodeagent
from nodeagent.errors import NodeAgentError
from nodeagent.guest.channel import GuestUnavailable
from nodeagent.hypervisor.protocol import DomainNotFound, HypervisorError


def error_classes() -> list[type[BaseException]]:
    """Every exception class defined in a module of the nodeagent package."""
    found: list[type[BaseException]] = []
    for info in pkgutil.walk_packages(nodeagent.__path__, "nodeagent."):
        try:
            module = importlib.import_module(info.name)
        except ModuleNotFoundError as exc:
            if exc.name == "libvirt":
                continue  # the libvirt driver, on a machine without the bindings
            raise
        for _, value in inspect.getmembers(module, inspect.isclass):
            if issubclass(value, BaseException) and value.__module__ == info.name:
                found.append(value)
    return found


ERRORS = error_classes()


def test_the_walk_finds_the_error_roots() -> None:
    """The walk sees the package's errors (so the next test checks something)."""
    names = {cls.__name__ for cls in ERRORS}
    assert {"HypervisorError", "DiskError", "NetworkError", "GuestChannelError"} <= names
    assert {"GuestOpError", "NoFreePort", "ImageError", "NodeAgentError"} <= names


@pytest.mark.parametrize("cls", ERRORS, ids=lambda cls: cls.__qualname__)
def test_every_node_agent_error_derives_from_the_base(cls: type[BaseException]) -> None:
    """Every exception class under nodeagent/ is a NodeAgentError."""
    assert issubclass(cls, NodeAgentError)


def test_retryable_is_a_class_default_overridable_per_error() -> None:
    """retryable comes from the class unless the raiser says otherwise."""
    assert HypervisorError("x").retryable is False
    assert HypervisorError("x", retryable=True).retryable is True
    assert DomainNotFound("x").retryable is False
    assert GuestUnavailable("x").retryable is True
    assert GuestUnavailable("x", retryable=False).retryable is False
