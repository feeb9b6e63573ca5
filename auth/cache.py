"""A per-process cache of API-key records, kept for minutes and re-checked in the
round trip each request makes anyway.

Two ages matter:

* **Fresh** (``FRESH_SECONDS``, 0.5 s since Redis last confirmed the entry): the
  entry is trusted without asking Redis. Only requests that make no round trip of
  their own lean on this (a rate-limit lease, a public page read with a key), so a
  revocation or rotation reaches every worker of every instance within 0.5 s, well
  inside the one-second promise of CONTRACT section 6.
* **Known** (up to ``KEEP_SECONDS``): the entry's identity and limits are used to
  build the request's one Redis call (gateway.ratelimit.admission), and that call
  checks the record's ``version`` before it counts anything. A changed record
  (revoked, rotated, edited, swept) fails the check, the worker reads the record
  again, and nothing was counted on the stale one.

Why not a plain short TTL, as earlier releases had: with many tenants, each doing a
few requests a second, a 0.5 s TTL is shorter than the gap between one tenant's
requests, so nearly every request looked its key up again (a second round trip).
Why not pub/sub invalidation: delivery is at most once, and a half-open connection
drops messages silently, so it would still need the per-request check as its
backstop; the check alone is exact and costs one HMGET inside a call made anyway.
The worker that revokes or rotates also drops its own entries at once (``discard``).

Only live keys are cached (unknown keys are not), so the cache cannot be filled
by guessing, and an entry is re-checked for the key's expiry on every hit.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from auth.identity import Identity

# Well under the one-second revocation promise of CONTRACT section 6, leaving
# room for a request already past its look-up when the change lands.
FRESH_SECONDS = 0.5
# How long a record is kept while its version checks keep passing: long enough that a
# tenant doing a request every few seconds finds its record, short enough that an
# entry for a key nobody uses any more leaves.
KEEP_SECONDS = 300.0
MAX_ENTRIES = 50_000  # ~1 KB each: a worker serving 50,000 active keys holds ~50 MB
# last_used_at is written at most this often per key and worker.
TOUCH_INTERVAL_SECONDS = 60.0


@dataclass(slots=True)
class Entry:
    identity: Identity
    expires_ts: float | None  # the key's own expiry (epoch seconds), if any
    checked: float  # time.monotonic() when Redis last confirmed this record
    version: str = "0"  # the record's version when it was read


def _no_digest(secret: str) -> str:
    raise RuntimeError("this KeyCache was made without a digest function")


class KeyCache:
    """digest -> Entry. Greenlets of one worker share it; its operations are single
    dict reads and writes, which need no lock. Entries are kept in the order Redis
    last confirmed them, so eviction drops the least recently confirmed first."""

    def __init__(
        self,
        ttl: float = FRESH_SECONDS,
        max_entries: int = MAX_ENTRIES,
        digest: Callable[[str], str] | None = None,
        keep: float = KEEP_SECONDS,
    ) -> None:
        # The app's keyed digest of a presented key (auth.keys.digester), made once per app.
        self.digest = digest or _no_digest
        self.ttl = ttl
        self.keep = max(keep, ttl)
        self.max_entries = max_entries
        self._entries: dict[str, Entry] = {}
        self._touched: dict[str, float] = {}

    def get(self, key_digest: str) -> Identity | None:
        """The identity when the entry is fresh (trusted without asking Redis)."""
        entry = self.known(key_digest)
        return entry.identity if entry is not None and self.fresh(entry) else None

    def known(self, key_digest: str) -> Entry | None:
        """The entry while it is kept and the key not expired, fresh or not: its version
        must be checked by Redis before it counts (see the module's docstring)."""
        entry = self._entries.get(key_digest)
        if entry is None:
            return None
        if time.monotonic() - entry.checked >= self.keep or (
            entry.expires_ts is not None and entry.expires_ts <= time.time()
        ):
            self._entries.pop(key_digest, None)
            return None
        return entry

    def fresh(self, entry: Entry) -> bool:
        return time.monotonic() - entry.checked < self.ttl

    def put(self, key_digest: str, identity: Identity, expires_ts: float | None, version: str = "0") -> None:
        if key_digest not in self._entries and len(self._entries) >= self.max_entries:
            self._evict()
        self._entries.pop(key_digest, None)  # re-inserted last: the newest confirmation
        self._entries[key_digest] = Entry(identity, expires_ts, time.monotonic(), version)

    def confirm(self, key_digest: str, entry: Entry) -> None:
        """Redis has just confirmed ``entry``'s version: fresh again, and last to be evicted."""
        entry.checked = time.monotonic()
        if self._entries.pop(key_digest, None) is not None:
            self._entries[key_digest] = entry

    def drop(self, key_digest: str) -> None:
        self._entries.pop(key_digest, None)

    def discard(self, key_id: str) -> None:
        """Forget every entry of ``key_id`` (this worker revoked or rotated it)."""
        for key_digest, entry in list(self._entries.items()):
            if entry.identity.id == key_id:
                self._entries.pop(key_digest, None)

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

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
        # The least recently confirmed tenth (dicts keep insertion order): O(n) once per
        # n/10 insertions, and the keys in use stay.
        for key_digest in list(self._entries)[: max(1, self.max_entries // 10)]:
            self._entries.pop(key_digest, None)
