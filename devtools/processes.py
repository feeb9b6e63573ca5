"""Child processes of the dev tools, the tests and the benchmarks (redis-server, gunicorn)."""

from __future__ import annotations

import subprocess


def stop_process(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """SIGTERM (Redis flushes, gunicorn shuts down gracefully), then SIGKILL if it hangs."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(5)
