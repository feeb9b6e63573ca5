"""A short-lived, per-process cache of API-key look-ups.

Why a plain TTL and no pub/sub invalidation: measured on this stack, a look-up
through Redis costs ~0.1-0.2 ms (one EVAL round trip) and a cache hit ~4 us (the
HMAC plus a dict read). With a 0.5 s TTL a busy key costs each worker at most
two Redis round trips a second, so a warm request makes none, and revocation or
rotation reaches every worker of every instance within 0.5 s by construction.
A pub/sub listener would still need a sub-second TTL as its backstop (pub/sub
delivery is at most once and a half-open connection drops messages silently),
so it could not raise the hit rate; it would only add a background greenlet
per worker and a reconnect loop to get wrong. The worker that performs a
revocation or rotation also drops its own entries at once (``discard``).

Only live keys are cached (unknown keys are not), so the cache cannot be filled
by guessing, and an entry is re-checked for expiry on every hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from auth.identity import Identity

# Well under the one-second revocation promise of CONTRACT section 6, leaving
# room for a request already past its look-up when the change lands.
TTL_SECONDS = 0.5
MAX_ENTRIES = 10_000
# last_used_at is written at most this often per key and worker.
TOUCH_INTERVAL_SECONDS = 60.0


@dataclass(frozen=True)
class Entry:
    identity: Identity
    expires_ts: float | None  # the key's own expiry (epoch seconds), if any
    fetched: float  # time.monotonic() of the Redis look-up


def _no_digest(secret: str) -> str:
    raise RuntimeError("this KeyCache was made without a digest function")


class KeyCache:
    """digest -> Entry for ``ttl`` seconds. Greenlets of one worker share it; its
    operations are single dict reads and writes, which need no lock."""

    def __init__(
        self,
        ttl: float = TTL_SECONDS,
        max_entries: int = MAX_ENTRIES,
        digest: Callable[[str], str] | None = None,
    ) -> None:
        # The app's keyed digest of a presented key (auth.keys.digester), made once per app.
        self.digest = digest or _no_digest
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: dict[str, Entry] = {}
        self._touched: dict[str, float] = {}

    def get(self, key_digest: str) -> Identity | None:
        """The cached identity when the entry is fresh and the key not expired."""
        entry = self._entries.get(key_digest)
        if entry is None:
            return None
        if time.monotonic() - entry.fetched >= self.ttl or (
            entry.expires_ts is not None and entry.expires_ts <= time.time()
        ):
            self._entries.pop(key_digest, None)
            return None
        return entry.identity

    def put(self, key_digest: str, identity: Identity, expires_ts: float | None) -> None:
        if len(self._entries) >= self.max_entries:
            self._evict()
        self._entries[key_digest] = Entry(identity, expires_ts, time.monotonic())

    def discard(self, key_id: str) -> None:
        """Forget every entry of ``key_id`` (this worker revoked or rotated it)."""
        for key_digest, entry in list(self._entries.items()):
            if entry.identity.id == key_id:
                self._entries.pop(key_digest, None)

    def clear(self) -> None:
        self._entries.clear()

    def should_touch(self, key_id: str) -> bool:
        """True at most once per TOUCH_INTERVAL_SECONDS per key (then records the touch)."""
        now = time.monotonic()
        last = self._touched.get(key_id)
        if last is not None and now - last < TOUCH_INTERVAL_SECONDS:
            return False
        if len(self._touched) >= self.max_entries:
            self._touched.clear()
        self._touched[key_id] = now
        return True

    def _evict(self) -> None:
        # Stale entries first; if every entry is fresh, drop them all (they refill in one TTL).
        now = time.monotonic()
        stale = [d for d, e in self._entries.items() if now - e.fetched >= self.ttl]
        for key_digest in stale or list(self._entries):
            self._entries.pop(key_digest, None)
