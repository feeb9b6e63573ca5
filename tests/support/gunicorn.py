"""Run the real gateway under gunicorn for cross-worker and fault tests."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

import requests

from devtools.processes import stop_process
from devtools.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]


class GunicornServer:
    """``gunicorn -c gunicorn.conf.py wsgi:app`` on a free port with the given environment."""

    def __init__(self, env: Mapping[str, str], workers: int = 2, log_path: Path | None = None) -> None:
        self.port = free_port()
        self.workers = workers
        self.env = {
            **os.environ,
            **env,
            "PORT": str(self.port),
            "HOST": "127.0.0.1",
            "WEB_CONCURRENCY": str(workers),
        }
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> GunicornServer:
        log = open(self.log_path, "wb") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        cmd = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
        self.process = subprocess.Popen(cmd, cwd=ROOT, env=self.env, stdout=log, stderr=log)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process and self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited with {self.process.returncode}; see {self.log_path}")
            try:
                if requests.get(self.url + "/healthz", timeout=0.5).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not answer /healthz within {timeout}s")

    def worker_pids(self) -> set[int]:
        """PIDs of the worker processes (children of the master)."""
        assert self.process is not None
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True, text=True)
        return {int(p) for p in out.stdout.split()}

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None

    def __enter__(self) -> GunicornServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
