"""1,000 concurrent SSE streams on one gunicorn instance: ``python -m bench.streams``.

Starts a private redis-server and one gunicorn (``gunicorn.conf.py``: gevent
workers, ``--workers`` of them, production settings), prepares one session per
stream, then:

1. baseline: probes ``GET /healthz`` for ``--baseline-seconds`` with no stream open;
2. load: opens ``--streams`` concurrent ``GET /agents/stream`` (asyncio client,
   built-in agent pacing ``--delay-ms`` between words) while the probe keeps
   measuring /healthz and the worker RSS is sampled from /proc;
3. checks every stream ended with its ``done`` frame and prints the figures.

Targets (issue 5): all streams complete, /healthz p99 < 100 ms while they are
open, at most 80 MB RSS per worker. The probe runs in its own process, opening
a new connection per probe like a load balancer's health check, so the client's
own event loop cannot inflate its figures. Exit status 0 when every target is met.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import multiprocessing
import os
import secrets
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from devtools.gunicorn import GunicornServer

ROOT = Path(__file__).resolve().parents[1]
TARGET_P99_MS = 100.0
TARGET_RSS_MB = 80.0


@dataclass
class StreamResult:
    ok: bool
    frames: int = 0
    seconds: float = 0.0
    error: str = ""


@dataclass
class Sampler:
    """Peak RSS per worker, sampled from /proc while the load runs."""

    pids: list[int]
    peak_kb: dict[int, int] = field(default_factory=dict)
    stop: threading.Event = field(default_factory=threading.Event)

    def sample(self) -> None:
        for pid in self.pids:
            self.peak_kb[pid] = max(self.peak_kb.get(pid, 0), rss_kb(pid))

    def run(self) -> None:
        while not self.stop.wait(0.2):
            self.sample()


def rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def worker_pids(master: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True, check=False)
    return [int(p) for p in out.stdout.split()]


# ---- the /healthz probe (its own process) ------------------------------------------


def probe(port: int, seconds: float, interval: float, stop: Any, out: Any) -> None:
    """Time GET /healthz on a fresh connection every ``interval`` s until ``stop`` or ``seconds``."""
    latencies, failures = [], 0
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and not stop.is_set():
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().read() == b"ok"
            conn.close()
        except OSError:
            ok = False
        elapsed = (time.perf_counter() - started) * 1000
        if ok:
            latencies.append(elapsed)
        else:
            failures += 1
        time.sleep(max(0.0, interval - elapsed / 1000))
    out.put({"latencies": latencies, "failures": failures})


class Probe:
    """The /healthz probe in its own process, so the stream client cannot slow it down."""

    def __init__(self, port: int, seconds: float, interval: float) -> None:
        self.stop = multiprocessing.Event()
        self.queue: Any = multiprocessing.Queue()
        self.process = multiprocessing.Process(
            target=probe, args=(port, seconds, interval, self.stop, self.queue), daemon=True
        )
        self.process.start()

    def result(self, timeout: float) -> dict[str, Any]:
        result: dict[str, Any] = self.queue.get(timeout=timeout)
        self.process.join(5)
        return result

    def finish(self) -> dict[str, Any]:
        self.stop.set()
        return self.result(timeout=15)


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(pct / 100 * (len(ordered) - 1)))]


def summarize(result: dict[str, Any]) -> dict[str, float]:
    values = result["latencies"]
    return {
        "probes": len(values),
        "failures": result["failures"],
        "p50_ms": round(percentile(values, 50), 2),
        "p99_ms": round(percentile(values, 99), 2),
        "max_ms": round(max(values), 2) if values else float("nan"),
    }


# ---- the stream clients (asyncio) -------------------------------------------------------


class Gauge:
    def __init__(self) -> None:
        self.open = 0
        self.peak = 0

    def up(self) -> None:
        self.open += 1
        self.peak = max(self.peak, self.open)

    def down(self) -> None:
        self.open -= 1


async def one_stream(port: int, token: str, session_id: str, gauge: Gauge, timeout: float) -> StreamResult:
    started = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
    except (OSError, TimeoutError) as exc:
        return StreamResult(False, error=f"connect: {type(exc).__name__}")
    # HTTP/1.0: the body is the raw event stream and ends when the server closes.
    writer.write(
        f"GET /agents/stream?session_id={session_id} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
        f"Authorization: Bearer {token}\r\nAccept: text/event-stream\r\n\r\n".encode()
    )
    gauge.up()
    try:
        body = await asyncio.wait_for(reader.read(-1), timeout)
    except (OSError, TimeoutError) as exc:
        return StreamResult(False, error=f"read: {type(exc).__name__}")
    finally:
        gauge.down()
        writer.close()
    text = body.decode(errors="replace")
    head, _, events = text.partition("\r\n\r\n")
    ok = head.startswith("HTTP/1.") and " 200 " in head.split("\r\n")[0] and '"type": "done"' in events
    frames = events.count("\nevent: ") + events.startswith("event: ")
    error = "" if ok else (head.split("\r\n")[0] or "empty answer")
    return StreamResult(ok, frames, time.monotonic() - started, error)


async def open_streams(
    port: int, token: str, session_ids: list[str], timeout: float, ramp: float
) -> tuple[list[StreamResult], int]:
    """Open every stream, spread evenly over ``ramp`` seconds (clients do not arrive in one
    instant), and wait for all of them; the gauge records how many were open at once."""
    gauge = Gauge()

    async def delayed(index: int, session_id: str) -> StreamResult:
        await asyncio.sleep(ramp * index / len(session_ids))
        return await one_stream(port, token, session_id, gauge, timeout)

    results = await asyncio.gather(*(delayed(i, sid) for i, sid in enumerate(session_ids)))
    return list(results), gauge.peak


# ---- set-up ---------------------------------------------------------------------------


def server_env(args: argparse.Namespace, redis_url: str) -> dict[str, str]:
    return {
        **os.environ,
        "FLASK_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "REDIS_URL": redis_url,
        "WEB_CONCURRENCY": str(args.workers),
        "FORCE_HTTPS": "false",
        "TRUSTED_PROXY_COUNT": "0",
        "AGENT_BACKEND": "builtin",
        "AGENT_BUILTIN_DELAY_MS": str(args.delay_ms),
        "STREAM_MAX_CONCURRENT_PER_KEY": str(args.streams + 10),
        "LOG_LEVEL": "WARNING",
    }


def create_key(env: dict[str, str]) -> tuple[str, str]:
    """A key through the real CLI, with limits far above what the run spends."""
    cmd = [sys.executable, "-m", "flask", "--app", "wsgi", "keys", "create", "--name", "bench-streams"]
    cmd += ["--scope", "agents:write", "--rate-limit", "1000000/minute", "--json"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    record = json.loads(out.stdout)
    return record["key"], f"api_key:{record['id']}"


def make_sessions(redis_url: str, owner: str, count: int, words: int) -> list[str]:
    from core.redis import create_redis
    from gateway.agents import service

    r = create_redis(redis_url, socket_timeout=5, connect_timeout=5)
    message = " ".join(f"word{n}" for n in range(words))
    ids = []
    for _ in range(count):
        session_id = service.create_session(r, owner=owner)
        service.add_message(r, session={"id": session_id, "created_by": owner}, role="user", content=message)
        ids.append(session_id)
    return ids


# ---- the run ----------------------------------------------------------------------------


def measure(
    args: argparse.Namespace, port: int, master: int, token: str, session_ids: list[str]
) -> dict[str, Any]:
    pids = worker_pids(master)
    idle_rss = {pid: rss_kb(pid) for pid in pids}
    baseline = Probe(port, args.baseline_seconds, args.probe_interval).result(args.baseline_seconds + 30)
    sampler = Sampler(pids)
    sampler_thread = threading.Thread(target=sampler.run, daemon=True)
    sampler_thread.start()
    loaded_probe = Probe(port, args.timeout, args.probe_interval)
    started = time.monotonic()
    results, peak_open = asyncio.run(open_streams(port, token, session_ids, args.timeout, args.ramp_seconds))
    elapsed = time.monotonic() - started
    loaded = loaded_probe.finish()  # probing covered exactly the time streams were open
    sampler.stop.set()
    sampler_thread.join(2)
    sampler.sample()
    return {
        "results": results,
        "elapsed": elapsed,
        "peak_open": peak_open,
        "baseline": summarize(baseline),
        "loaded": summarize(loaded),
        "idle_rss_mb": {pid: round(kb / 1024, 1) for pid, kb in idle_rss.items()},
        "peak_rss_mb": {pid: round(kb / 1024, 1) for pid, kb in sampler.peak_kb.items()},
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    from devtools.redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix="bench-streams-") as tmp, RedisServer(Path(tmp)) as redis_server:
        env = server_env(args, redis_server.url)
        token, owner = create_key(env)
        session_ids = make_sessions(redis_server.url, owner, args.streams, args.words)
        server = GunicornServer(env, args.workers, Path(tmp) / "gunicorn.log").start(timeout=30)
        try:
            assert server.process is not None
            figures = measure(args, server.port, server.process.pid, token, session_ids)
        finally:
            server.stop(timeout=30)
        lines = (Path(tmp) / "gunicorn.log").read_text(errors="replace").splitlines()
        figures["log_tail"] = [line for line in lines if "ERROR" in line or "WARNING" in line][-5:]
        return figures


def report(args: argparse.Namespace, figures: dict[str, Any]) -> bool:
    results: list[StreamResult] = figures["results"]
    completed = sum(r.ok for r in results)
    durations = [r.seconds for r in results if r.ok]
    baseline, loaded = figures["baseline"], figures["loaded"]
    peak_rss = max(figures["peak_rss_mb"].values(), default=0.0)
    ratio = loaded.get("p99_ms", float("nan")) / baseline["p99_ms"] if baseline["p99_ms"] else float("nan")
    print(
        f"streams: {completed}/{len(results)} completed with their done frame "
        f"(peak {figures['peak_open']} open at once) in {figures['elapsed']:.1f}s"
    )
    if durations:
        print(
            f"  stream duration: median {statistics.median(durations):.2f}s, max {max(durations):.2f}s; "
            f"frames per stream: {results[0].frames}"
        )
    errors = sorted({r.error for r in results if not r.ok})
    if errors:
        print(f"  failures: {errors[:5]}; server log: {figures['log_tail']}")
    print(f"/healthz baseline (no streams): {baseline}")
    print(f"/healthz with streams open:     {loaded}")
    print(f"  p99 with streams / p99 baseline: {ratio:.2f}x")
    peaks = list(figures["peak_rss_mb"].values())
    mean_peak = sum(peaks) / len(peaks) if peaks else 0.0
    per_stream_kb = (mean_peak - _mean(figures["idle_rss_mb"])) * 1024 * len(peaks) / len(results)
    print(
        f"worker RSS idle MB: {figures['idle_rss_mb']}; peak MB: {figures['peak_rss_mb']} "
        f"(mean {mean_peak:.1f}; ~{per_stream_kb:.0f} KB per open stream)"
    )
    met = (
        completed == len(results)
        and loaded["p99_ms"] < TARGET_P99_MS
        and loaded["failures"] == 0
        and peak_rss <= TARGET_RSS_MB
    )
    print(
        f"targets (all complete, p99 < {TARGET_P99_MS:.0f} ms, RSS <= {TARGET_RSS_MB:.0f} MB/worker): "
        f"{'MET' if met else 'NOT MET'}"
    )
    return met


def _mean(values: dict[int, float]) -> float:
    return sum(values.values()) / len(values) if values else 0.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.streams", description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=int(os.environ.get("WEB_CONCURRENCY", "2")))
    parser.add_argument("--delay-ms", type=int, default=100, help="AGENT_BUILTIN_DELAY_MS of the server")
    parser.add_argument("--words", type=int, default=20, help="words in each session's user message")
    parser.add_argument("--ramp-seconds", type=float, default=3.0, help="spread the stream opens over this")
    parser.add_argument("--baseline-seconds", type=float, default=5.0)
    parser.add_argument("--probe-interval", type=float, default=0.02)
    parser.add_argument("--timeout", type=float, default=120.0, help="bound on the whole load phase")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    return 0 if report(args, run(args)) else 1


if __name__ == "__main__":
    sys.exit(main())
