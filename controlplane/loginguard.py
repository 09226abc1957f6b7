"""Backoff for repeated failed logins, per namespace and per client address.

Pure: the caller passes the time. Each subject (a namespace, a client
address) may fail ``free`` times in a row without delay; after that each
failure makes it wait ``base * 2 ** (n - free - 1)`` seconds, at most
``cap``, before its next try is even checked. A success clears the subjects
it names, and a subject forgotten ``forget_after`` seconds after its last
failure starts afresh. The right key is therefore refused only while a
backoff it shares runs (never longer than ``cap``), and a flood of wrong keys
costs one scrypt per backoff period instead of one per request.

The number of subjects tracked is bounded (``max_subjects``): when full, the
subjects whose backoff has ended are dropped first, then the oldest.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class Policy:
    """How failures slow a subject down (seconds)."""

    free: int = 3
    base: float = 1.0
    cap: float = 30.0
    forget_after: float = 900.0
    max_subjects: int = 100_000

    def delay(self, failures: int) -> float:
        """The wait after this many failures in a row."""
        if failures <= self.free:
            return 0.0
        return float(min(self.cap, self.base * 2 ** (failures - self.free - 1)))


@dataclass
class _Record:
    failures: int
    last: float
    until: float


class LoginGuard:
    """Failure counts and backoff deadlines for login subjects."""

    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self._records: dict[str, _Record] = {}

    def wait(self, subjects: Iterable[str], now: float) -> float:
        """Seconds until every subject may try again (0: try now)."""
        longest = 0.0
        for subject in subjects:
            record = self._records.get(subject)
            if record is not None and now - record.last < self.policy.forget_after:
                longest = max(longest, record.until - now)
        return longest

    def failed(self, subjects: Iterable[str], now: float) -> None:
        """Count a failed try against each subject."""
        for subject in subjects:
            record = self._records.get(subject)
            if record is None or now - record.last >= self.policy.forget_after:
                self._make_room(now)
                record = self._records[subject] = _Record(0, now, now)
            record.failures += 1
            record.last = now
            record.until = now + self.policy.delay(record.failures)

    def succeeded(self, subjects: Iterable[str]) -> None:
        """Clear each subject's failures."""
        for subject in subjects:
            self._records.pop(subject, None)

    def tracked(self) -> int:
        """How many subjects have failures on record."""
        return len(self._records)

    def _make_room(self, now: float) -> None:
        if len(self._records) < self.policy.max_subjects:
            return
        for subject in [s for s, r in self._records.items() if r.until <= now]:
            del self._records[subject]
        while len(self._records) >= self.policy.max_subjects:
            del self._records[next(iter(self._records))]
