"""The node agent's error tree: one base, and whether trying again may help.

    NodeAgentError (retryable: bool; class default, overridable per instance)
    ├── HypervisorError          a hypervisor operation failed     (hypervisor.protocol)
    │   └── DomainNotFound       no domain for that instance
    ├── NoFreePort               every console TCP port is taken   (hypervisor.console_ports)
    ├── ImageError               not an image png understands      (png; also a ValueError)
    ├── DiskError                a disk could not be prepared      (disks.protocol)
    ├── NetworkError             a network could not be set up     (network.protocol)
    │   └── ClaimRefused         another cluster holds it on this host (network.claims;
    │                            also a FatalError)
    ├── GuestChannelError        talking to a guest agent failed   (guest.channel)
    │   ├── GuestError           the guest answered ERROR
    │   └── GuestUnavailable     no working link; retryable
    ├── GuestOpError             an agent operation failed         (guest.ops)
    ├── ForeignCluster           the control plane is another cluster's (membership)
    └── FatalError               the node agent cannot go on: it stops and exits 1

The executor turns every one of them into a failed ``Result`` carrying the
error's ``retryable``; anything else is an internal error, never retried.
"""

from __future__ import annotations


class NodeAgentError(Exception):
    """Base of every error the node agent raises on purpose."""

    retryable = False

    def __init__(self, message: str = "", *, retryable: bool | None = None) -> None:
        super().__init__(message)
        if retryable is not None:
            self.retryable = retryable


class FatalError(NodeAgentError):
    """Raised while starting or registering, it stops the node agent (exit 1)."""
