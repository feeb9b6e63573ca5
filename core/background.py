"""One per-process background loop: a daemon thread that calls ``tick`` every few
seconds in the process that started it, and ``final`` once at exit.

Three parts of the gateway batch work per process and write it out in the
background (rate-limit leases given back, access-log lines, metric deltas). Each
has the same three needs, handled here once:

* **Start late.** The loop starts on first use, in the process that uses it: after
  gunicorn forks its workers and after gevent patches ``threading`` (then the
  "thread" is a greenlet on the worker's hub). A loop started at import in the
  master would be lost at the fork.
* **Notice forks.** A forked child (a gunicorn worker of a preloaded app, an RQ
  work horse) inherits its parent's state but not its threads. ``owned()`` tells
  the owner whether the state in hand is this process's or a copy of its
  parent's; ``ensure_started()`` starts a fresh loop in the child and calls
  ``on_fork`` first so the child drops the copy.
* **Finish at exit.** ``final`` runs once at interpreter exit in the process that
  started the loop (never in a forked child's copy), so nothing batched is lost
  on a clean shutdown.
"""

from __future__ import annotations

import atexit
import logging
import threading
import time
from collections.abc import Callable

from core import forks

log = logging.getLogger(__name__)


class BackgroundLoop:
    """``tick()`` every ``interval`` seconds on a daemon thread of this process."""

    def __init__(
        self,
        name: str,
        interval: float,
        tick: Callable[[], None],
        *,
        final: Callable[[], None] | None = None,
        on_fork: Callable[[], None] | None = None,
    ) -> None:
        self.name = name
        self.interval = interval
        self.tick = tick
        self.final = final
        self.on_fork = on_fork
        self.pid: int | None = None  # the process whose loop runs
        self.lock = threading.Lock()

    def owned(self) -> bool:
        """True when the loop runs in this process (state in hand is this process's own)."""
        return self.pid == forks.pid()

    def ensure_started(self) -> None:
        """Start the loop in this process unless it runs already (cheap when it does)."""
        if self.pid == forks.pid():
            return
        with self.lock:
            if self.pid == forks.pid():
                return
            inherited = self.pid is not None
            self.pid = forks.pid()
        if inherited and self.on_fork is not None:
            self.on_fork()  # a forked child: drop the parent's batched state
        threading.Thread(target=self._run, name=self.name, daemon=True).start()
        atexit.register(self._at_exit, forks.pid())

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            try:
                self.tick()
            except Exception:  # one failed round must not end the loop for the process's life
                log.exception("background loop %s failed; trying again in %.1f s", self.name, self.interval)

    def _at_exit(self, pid: int) -> None:
        if self.final is not None and pid == forks.pid():
            self.final()
