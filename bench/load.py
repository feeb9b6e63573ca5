"""Load generators for the benchmarks: ``wrk`` when installed, else a thread-per-connection one.

A ``Target`` is one kind of request (method, path, body, and the API keys to cycle
through, round-robin); a run answers ``LoadResult``: requests/s, the 99th-percentile
latency and the count of requests served. Any answer that is not 2xx fails the run, so
no figure ever includes a refused (429) or failed request.
"""

from __future__ import annotations

import http.client
import json
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Target:
    url: str  # http://127.0.0.1:port/path
    method: str = "GET"
    body: bytes = b""
    headers: Mapping[str, str] = field(default_factory=dict)
    keys: Sequence[str] = ()  # API keys sent as Bearer tokens, one per request, round-robin

    @property
    def path(self) -> str:
        return "/" + self.url.removeprefix("http://").split("/", 1)[1]


@dataclass(frozen=True)
class LoadResult:
    rps: float
    p99_ms: float
    requests: int


Load = Callable[[Target, int, int], LoadResult]

_UNIT_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _lua_string(value: str | bytes) -> str:
    text = value.decode() if isinstance(value, bytes) else value
    return json.dumps(text)  # a JSON string literal is a valid Lua string literal for ASCII text


def wrk_script(target: Target) -> str:
    """The Lua that makes wrk send ``target``: method, body, headers and the key rotation."""
    lines = [f"wrk.method = {_lua_string(target.method)}"]
    if target.body:
        lines.append(f"wrk.body = {_lua_string(target.body)}")
    lines += [f"wrk.headers[{_lua_string(k)}] = {_lua_string(v)}" for k, v in target.headers.items()]
    if target.keys:
        keys = ",\n".join(f"  {_lua_string('Bearer ' + key)}" for key in target.keys)
        # Each wrk thread has its own Lua state: start the threads at different offsets.
        lines += [
            f"local keys = {{\n{keys}\n}}",
            "local i = 0",
            "function init(args) i = math.random(#keys) end",
            "function request()",
            "  i = i % #keys + 1",
            '  wrk.headers["Authorization"] = keys[i]',
            "  return wrk.format()",
            "end",
        ]
    return "\n".join(lines) + "\n"


def parse_wrk(out: str, seconds: int) -> LoadResult:
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers:\n{out}")
    requests = re.search(r"(\d+) requests in", out)
    p99 = re.search(r"^\s*99%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
    if not requests or not p99:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    count = int(requests.group(1))
    return LoadResult(count / seconds, float(p99.group(1)) * _UNIT_MS[p99.group(2)], count)


def wrk(target: Target, seconds: int, connections: int) -> LoadResult:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(wrk_script(target))
    try:
        cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", script.name]
        out = subprocess.run([*cmd, target.url], capture_output=True, text=True, check=True).stdout
    finally:
        Path(script.name).unlink()
    try:
        return parse_wrk(out, seconds)
    except RuntimeError as exc:
        raise RuntimeError(f"{target.method} {target.url}: {exc}") from None


def percentile(values_ms: list[float], share: float) -> float:
    ordered = sorted(values_ms)
    return ordered[min(len(ordered) - 1, int(len(ordered) * share))] if ordered else 0.0


def python_load(target: Target, seconds: int, connections: int) -> LoadResult:
    """Fallback generator: ``connections`` threads, each on one keep-alive connection."""
    host, port = target.url.removeprefix("http://").split("/", 1)[0].split(":")
    latencies: list[list[float]] = [[] for _ in range(connections)]
    errors: list[str] = []
    stop_at = time.monotonic() + seconds

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        headers = dict(target.headers)
        while time.monotonic() < stop_at:
            if target.keys:
                headers["Authorization"] = f"Bearer {target.keys[(n + len(latencies[n])) % len(target.keys)]}"
            started = time.perf_counter()
            conn.request(target.method, target.path, body=target.body or None, headers=headers)
            response = conn.getresponse()
            response.read()
            if not 200 <= response.status < 300:
                errors.append(str(response.status))
                return
            latencies[n].append((time.perf_counter() - started) * 1000)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"non-2xx answers from {target.method} {target.url}: {errors[:3]}")
    served = [ms for per_thread in latencies for ms in per_thread]
    return LoadResult(len(served) / seconds, percentile(served, 0.99), len(served))
