"""A small circuit breaker: closed -> open after N consecutive failures -> half-open
after a cool-down (one trial call) -> closed on success, open again on failure.

State is per process (each gunicorn worker has its own breaker): a failing
upstream is detected by every worker within N calls, which is cheap, and it
avoids a Redis round trip on every upstream call.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

CLOSED, OPEN, HALF_OPEN = "closed", "open", "half_open"


class CircuitOpenError(Exception):
    """The breaker refuses calls for now; ``retry_in`` is the seconds left of the cool-down."""

    def __init__(self, retry_in: float) -> None:
        super().__init__(f"circuit open, retry in {retry_in:.1f}s")
        self.retry_in = retry_in


class CircuitBreaker:
    """Thread- and greenlet-safe; ``on_change(state)`` is told of every state change."""

    def __init__(
        self,
        *,
        failure_threshold: int,
        cooldown_seconds: float,
        on_change: Callable[[str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.failure_threshold = max(1, failure_threshold)
        self.cooldown_seconds = cooldown_seconds
        self.on_change = on_change
        self.clock = clock
        self.state = CLOSED
        self.failures = 0
        self.opened_at = 0.0
        self.trial_in_flight = False
        self._lock = threading.Lock()

    def before_call(self) -> None:
        """Let a call through, or raise CircuitOpenError at once."""
        with self._lock:
            if self.state == OPEN:
                left = self.opened_at + self.cooldown_seconds - self.clock()
                if left > 0:
                    raise CircuitOpenError(left)
                self._set(HALF_OPEN)
            if self.state == HALF_OPEN:
                # Only one trial call probes a recovering upstream; the others still fail fast.
                if self.trial_in_flight:
                    raise CircuitOpenError(0.0)
                self.trial_in_flight = True

    def success(self) -> None:
        with self._lock:
            self.failures = 0
            self.trial_in_flight = False
            self._set(CLOSED)

    def failure(self) -> None:
        with self._lock:
            self.trial_in_flight = False
            self.failures += 1
            if self.state == HALF_OPEN or self.failures >= self.failure_threshold:
                self.opened_at = self.clock()
                self._set(OPEN)

    def release(self) -> None:
        """A call ended without a verdict (the caller went away before any answer)."""
        with self._lock:
            self.trial_in_flight = False

    def _set(self, state: str) -> None:
        if state != self.state:
            self.state = state
            if self.on_change is not None:
                self.on_change(state)
