"""Rate-limit leases: a worker takes a few units of a large limit in one Redis call
and hands them out locally, so a busy identity costs a round trip every few requests.

Why: the limiter's Redis call is the largest single cost of a secured request
(the round trip, its system calls and the script in Redis; docs/rate-limits.md).
An identity far from its limits gains nothing from asking Redis every time.

Safety, the three properties the limiter promises:

* Never more than N. Leased units are counted in Redis when they are taken, by
  the same atomic script that decides, and a lease is never larger than what is
  left of every limit of the request. So the sum of all workers' grants never
  exceeds a limit.
* Exact near the limit. The script leases only a small share of what is left
  (``LEASE_SHARE``): a limit with fewer than ``2 * LEASE_SHARE`` units left is
  counted one request at a time, exactly as without leases. Small limits (the
  defaults, the login limit) therefore never lease at all.
* Nothing lost. A lease lives at most ``LEASE_SECONDS`` and never past the end
  of the shortest window it came from. Units still unused then are given back
  (``DECRBY``) to the same window, never to a later one, by a background sweeper
  and at exit (core.background.BackgroundLoop). The only cost of a lease is that, while one worker holds spare
  units, another may refuse a request up to ``LEASE_SECONDS`` early.

Headers of a request served from a lease report the counts Redis returned when
the lease was taken plus the units this worker has handed out since; other
workers' traffic since then shows on this worker's next lease.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from core.background import BackgroundLoop

log = logging.getLogger(__name__)

# A lease takes at most this share of what is left of the scarcest limit: with
# 1/64, a limit with fewer than 128 units left is never leased (exact counting).
LEASE_SHARE = 64
LEASE_SECONDS = 1.0
# A lease is taken only for policies this worker served at least this many requests of
# in its last LEASE_SECONDS: a cold identity (a tenant doing a few requests a second)
# would leave most of a lease unused, and giving it back costs more Redis work than the
# lease saved. Measured with 1,000 keys cycled (docs/performance.md): leasing every key
# cost ~10 Redis commands per request, most of them give-backs.
HOT_REQUESTS = 8
MAX_TRACKED = 50_000  # policy tuples whose demand is tracked (cleared when full)
# A lease ends this long before its shortest window does, so its return finds that window.
WINDOW_MARGIN = 0.05
# Returning: a counter whose time-to-live is longer than expected by more than this
# is a new window (the old one ended, or was reset), and is left alone.
RETURN_TOLERANCE_MS = 50

# KEYS: the lease's counters. ARGV[1]: units to give back; ARGV[1 + i]: the time to
# live counter i should have now if it is still the window the units came from.
RETURN_LUA = """
local units, tolerance = tonumber(ARGV[1]), tonumber(ARGV[#ARGV])
local returned = 0
for i = 1, #KEYS do
  local ttl = redis.call('PTTL', KEYS[i])
  if ttl > 0 and ttl <= tonumber(ARGV[1 + i]) + tolerance then
    local count = tonumber(redis.call('GET', KEYS[i]))
    if count and count > 0 then
      redis.call('DECRBY', KEYS[i], math.min(units, count)); returned = returned + 1
    end
  end
end
return returned
"""


@dataclass
class Lease:
    """Spare units of one request's limits, taken together in one Redis call."""

    keys: tuple[str, ...]  # the counters the units were counted in
    units: int  # spare units not yet handed out
    counts: tuple[int, ...]  # each counter's value right after the lease was taken
    ttls_ms: tuple[int, ...]  # each counter's time to live at that moment
    taken_at: float  # time.monotonic()
    expires_at: float

    def hand_out(self, now: float) -> tuple[tuple[int, ...], tuple[float, ...]]:
        """One unit: the counts and seconds-to-reset the request's headers describe."""
        self.units -= 1
        elapsed = now - self.taken_at
        left = self.units
        counts = tuple([count - left for count in self.counts])
        return counts, tuple([max(0.0, ttl / 1000 - elapsed) for ttl in self.ttls_ms])

    def same_windows(self, newer: Lease) -> bool:
        """True when ``newer`` was counted in the same windows as this lease."""
        elapsed_ms = (newer.taken_at - self.taken_at) * 1000
        pairs = zip(self.ttls_ms, newer.ttls_ms, strict=True)
        same = all(new <= old - elapsed_ms + RETURN_TOLERANCE_MS for old, new in pairs)
        return same and newer.expires_at <= self.taken_at + min(self.ttls_ms) / 1000

    def return_args(self, now: float) -> tuple[list[str], list[int]]:
        """The return script's KEYS and ARGV for this lease's unused units."""
        elapsed_ms = int((now - self.taken_at) * 1000)
        expected = [ttl - elapsed_ms for ttl in self.ttls_ms]
        return list(self.keys), [self.units, *expected, RETURN_TOLERANCE_MS]


class LeaseBook:
    """One worker's live leases, keyed by the request's policy tuple.

    The policy tuples are the limiter's cached objects, so a lookup hashes a few
    object ids. Nothing here yields under gevent, so the lock is never contended
    there; it orders the sweeper against the requests of threaded workers.
    """

    def __init__(self, give_back: Callable[[list[Lease]], None]) -> None:
        self.live: dict[Any, Lease] = {}
        # policies -> [start of the current period, requests in it, requests in the previous one]
        self.demand: dict[Any, list[float]] = {}
        self.ended: list[Lease] = []  # replaced while they still had units
        self.lock = threading.Lock()
        self.give_back = give_back
        # Started by the first lease, in the process that leases (after gunicorn's fork,
        # under gevent's patching); at exit it gives back every unit still unused.
        self.sweeper = BackgroundLoop(
            "ratelimit-leases",
            LEASE_SECONDS / 2,
            self.sweep,
            final=lambda: self.sweep(everything=True),
            on_fork=self._forget,
        )

    def wanted(self, policies: Sequence[Any], cap: int) -> int:
        """Units worth asking for on this request to Redis: 1 (no lease) unless ``policies``
        are hot here; counts the request as demand."""
        return cap if self._count(policies, time.monotonic()) >= HOT_REQUESTS else 1

    def _count(self, policies: Sequence[Any], now: float) -> int:
        """Count one request of ``policies``; returns the larger of this period's and the last one's."""
        seen = self.demand.get(policies)
        if seen is None:
            if len(self.demand) >= MAX_TRACKED:
                self.demand.clear()
            seen = self.demand[policies] = [now, 0, 0]
        elif now - seen[0] >= LEASE_SECONDS:  # a new period; the last one's count is the demand
            seen[2] = seen[1] if now - seen[0] < 2 * LEASE_SECONDS else 0
            seen[0], seen[1] = now, 0
        seen[1] += 1
        return int(max(seen[1], seen[2]))

    def serve(self, policies: Sequence[Any]) -> tuple[tuple[int, ...], tuple[float, ...]] | None:
        """A unit from a live lease of ``policies``, or None when there is none."""
        lease = self.live.get(policies)
        if lease is None:
            return None
        now = time.monotonic()
        with self.lock:
            if lease.units > 0 and now < lease.expires_at and self.live.get(policies) is lease:
                self._count(policies, now)  # demand served here still counts for the next lease's size
                return lease.hand_out(now)
        return None

    def add(self, policies: Sequence[Any], lease: Lease) -> None:
        """Keep ``lease`` for ``policies``, with the units of a live lease of the same windows.

        Greenlets that miss at the same moment each bring a lease; merging keeps them all
        usable. A lease of other windows is given back at the next sweep instead.
        """
        self.sweeper.ensure_started()
        with self.lock:
            old = self.live.get(policies)
            self.live[policies] = lease
            if old is not None and old.units > 0:
                if time.monotonic() < old.expires_at and old.same_windows(lease):
                    lease.units += old.units
                else:
                    self.ended.append(old)

    def sweep(self, *, everything: bool = False) -> None:
        """Give back the unused units of every ended lease (of every lease, at exit)."""
        if not self.sweeper.owned():
            return  # nothing leased here, or a forked child's copy of its parent's leases
        now = time.monotonic()
        with self.lock:
            ended = [k for k, lease in self.live.items() if everything or now >= lease.expires_at]
            leases = [self.live.pop(k) for k in ended] + self.ended
            self.ended = []
        leases = [lease for lease in leases if lease.units > 0]
        if leases:
            try:
                self.give_back(leases)
            except Exception:  # Redis away: the units stay counted until their window ends
                if not everything:  # at exit Redis may be gone already (tests, shutdown)
                    log.warning("could not give back %d rate-limit lease(s)", len(leases))

    def _forget(self) -> None:
        # A forked child does not own its parent's leases: the parent gives them back.
        with self.lock:
            self.live.clear()
            self.ended = []


def lease_expiry(now: float, ttls_ms: Sequence[int]) -> float:
    """When a lease taken ``now`` ends: LEASE_SECONDS, or before its shortest window does."""
    return now + min(LEASE_SECONDS, min(ttls_ms) / 1000 - WINDOW_MARGIN)
