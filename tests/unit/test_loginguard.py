"""Login backoff: free tries, then waits that double up to a cap."""

from __future__ import annotations

from controlplane.loginguard import LoginGuard, Policy

POLICY = Policy(free=3, base=1.0, cap=8.0, forget_after=100.0, max_subjects=4)


def test_the_first_failures_are_free_then_each_doubles_up_to_the_cap() -> None:
    """Three failures cost nothing; then 1, 2, 4, 8, 8 seconds."""
    assert [POLICY.delay(n) for n in range(1, 9)] == [0, 0, 0, 1, 2, 4, 8, 8]


def test_a_subject_waits_out_its_backoff_and_others_are_unaffected() -> None:
    """After four failures the namespace waits 1 s; another namespace does not wait."""
    guard = LoginGuard(POLICY)
    for _ in range(4):
        guard.failed(["ns:a", "addr:1.2.3.4"], now=10.0)
    assert guard.wait(["ns:a"], now=10.5) == 0.5
    assert guard.wait(["ns:a"], now=11.0) == 0.0
    assert guard.wait(["ns:b", "addr:5.6.7.8"], now=10.5) == 0.0
    assert guard.wait(["ns:b", "addr:1.2.3.4"], now=10.5) == 0.5


def test_success_clears_and_old_failures_are_forgotten() -> None:
    """A success clears its subjects; failures older than forget_after start afresh."""
    guard = LoginGuard(POLICY)
    for _ in range(6):
        guard.failed(["ns:a"], now=0.0)
    assert guard.wait(["ns:a"], now=0.0) == 4.0
    guard.succeeded(["ns:a"])
    assert guard.wait(["ns:a"], now=0.0) == 0.0
    for _ in range(6):
        guard.failed(["ns:a"], now=0.0)
    guard.failed(["ns:a"], now=200.0)
    assert guard.wait(["ns:a"], now=200.0) == 0.0


def test_the_number_of_subjects_tracked_is_bounded() -> None:
    """A flood of addresses never grows the table past max_subjects."""
    guard = LoginGuard(POLICY)
    for i in range(50):
        guard.failed([f"addr:{i}"], now=float(i))
    assert guard.tracked() <= POLICY.max_subjects


class _Context:
    def __init__(self, address: str) -> None:
        self._metadata = (("x-minicloud-client-address", address),)

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata


def test_the_passed_on_address_is_believed_only_from_a_trusted_proxy() -> None:
    """A trusted peer's x-minicloud-client-address is the caller; anyone else is their own peer."""
    from controlplane.api.auth import caller_address, peer_host

    assert peer_host("ipv4:10.1.2.3:5000") == "10.1.2.3"
    assert peer_host("ipv6:[::1]:5000") == "::1"
    assert peer_host("unix:/tmp/s") == ""
    trusted = frozenset({"127.0.0.1"})
    assert caller_address("ipv4:127.0.0.1:1", _Context("198.51.100.7"), trusted) == "198.51.100.7"
    assert caller_address("ipv4:10.0.0.9:1", _Context("198.51.100.7"), trusted) == "10.0.0.9"
    assert caller_address("ipv4:127.0.0.1:1", _Context("x\n" * 50), trusted) == "127.0.0.1"
