"""This process's id, without a system call each time it is asked.

Per-process state (buffers, background flushers, pooled sockets) must notice a
fork (gunicorn's workers, RQ's work horses) and start afresh in the child. Asking
``os.getpid()`` for that on every request is a system call each time (glibc no
longer caches it); the id read here is updated by an after-fork hook instead.
"""

from __future__ import annotations

import os

_pid = os.getpid()


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


def pid() -> int:
    """``os.getpid()``, read from memory."""
    return _pid
