"""Secured path vs bare Flask, side by side: ``python -m bench secured [--workers 2] [--duration 10]``.

Starts a private redis-server and two gunicorn servers with the same
gunicorn.conf.py (same worker class and worker count): the gateway in production
mode, and a bare Flask app answering "hello". Then it loads them in turns, bare
and secured alternately for ``--rounds`` rounds, so both see the same machine
load, and prints requests/s of each and the ratio (target: secured >= 60% of bare).

The secured request is ``GET /auth/me`` with an API key that has both a rate and
a daily quota (limits far above what the run can spend), so every request is
authenticated, scope-checked, rate- and quota-checked, and carries the full
security and rate-limit headers and an access log line.

Load generator: ``wrk`` (Debian/Ubuntu: ``apt-get install wrk``). Without it, a
built-in generator (threads holding keep-alive connections) is used; its own
cost is higher, so its figures are lower for both targets, but the ratio stays
comparable. ``--tool python`` forces it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path

from flask import Flask

from devtools.gunicorn import GunicornServer

ROOT = Path(__file__).resolve().parents[1]
TARGET_RATIO = 0.60


def _hello_app() -> Flask:
    app = Flask("hello")

    @app.get("/")
    def hello() -> str:
        """The baseline: a bare Flask view."""
        return "hello"

    return app


# gunicorn loads ``bench.secured:hello_app`` for the baseline server.
hello_app = _hello_app()


def _cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of processes (Linux /proc): robust against other load on the machine."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / ticks


def _server_pids(server: GunicornServer) -> list[int]:
    assert server.process is not None
    return [server.process.pid, *server.worker_pids()]


def _wrk(url: str, headers: Mapping[str, str], seconds: int, connections: int) -> float:
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{seconds}s"]
    for name, value in headers.items():
        cmd += ["-H", f"{name}: {value}"]
    out = subprocess.run([*cmd, url], capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"non-2xx answers from {url}:\n{out}")
    match = re.search(r"(\d+) requests in", out)
    if not match:
        raise RuntimeError(f"cannot read wrk output:\n{out}")
    return int(match.group(1)) / seconds


def _python_load(url: str, headers: Mapping[str, str], seconds: int, connections: int) -> float:
    """Fallback generator: ``connections`` threads, each on one keep-alive connection."""
    host, port_path = url.removeprefix("http://").split(":", 1)
    port, _, path = port_path.partition("/")
    counts = [0] * connections
    errors: list[str] = []
    stop_at = time.monotonic() + seconds

    def worker(n: int) -> None:
        conn = http.client.HTTPConnection(host, int(port), timeout=10)
        while time.monotonic() < stop_at:
            conn.request("GET", "/" + path, headers=dict(headers))
            response = conn.getresponse()
            response.read()
            if response.status != 200:
                errors.append(str(response.status))
                return
            counts[n] += 1

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(connections)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise RuntimeError(f"non-200 answers from {url}: {errors[:3]}")
    return sum(counts) / seconds


def _create_key(env: Mapping[str, str]) -> str:
    """A key with a rate and a quota far above what the run can spend."""
    from auth import keys
    from auth.loaders import pepper
    from core.redis import redis_from_config
    from gateway import create_app

    app = create_app(env)
    r = redis_from_config(app.config)
    _, secret = keys.create_key(
        r, pepper=pepper(app), name="bench", scopes=[], rate_limit="100000000/minute", quota="1000000000/day"
    )
    return secret


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench secured", description=__doc__.splitlines()[0])
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers for both servers")
    parser.add_argument("--duration", type=int, default=6, help="seconds per measurement")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="alternating bare/secured rounds")
    parser.add_argument("--tool", choices=("auto", "wrk", "python"), default="auto")
    parser.add_argument("--json", action="store_true", help="print the result as one JSON object")
    return parser.parse_args(argv)


def _measure(
    args: argparse.Namespace, bare: GunicornServer, gateway: GunicornServer, key: str, redis_pid: int
) -> dict[str, list[float]]:
    use_wrk = args.tool == "wrk" or (args.tool == "auto" and shutil.which("wrk"))
    load = _wrk if use_wrk else _python_load
    targets = {
        "bare": (bare, f"http://127.0.0.1:{bare.port}/", {}),
        "secured": (gateway, f"http://127.0.0.1:{gateway.port}/auth/me", {"Authorization": f"Bearer {key}"}),
    }
    results: dict[str, list[float]] = {name: [] for name in ("bare", "secured", "bare_cpu", "secured_cpu")}
    for _server, url, headers in targets.values():
        load(url, headers, 1, 4)  # warm up: imports, Lua script load, key cache
    for _ in range(args.rounds):
        for name, (server, url, headers) in targets.items():
            pids = [*_server_pids(server), redis_pid]
            cpu_before = _cpu_seconds(pids)
            rps = load(url, headers, args.duration, args.connections)
            cpu = _cpu_seconds(pids) - cpu_before
            results[name].append(rps)
            # Server-side CPU (gunicorn + Redis) per request, in microseconds.
            results[f"{name}_cpu"].append(cpu / (rps * args.duration) * 1e6)
    results["tool"] = ["wrk" if use_wrk else "python"]  # type: ignore[list-item]
    return results


def _report(args: argparse.Namespace, results: dict[str, list[float]]) -> dict[str, object]:
    bare = statistics.median(results["bare"])
    secured = statistics.median(results["secured"])
    # Each round measures bare and then secured back to back, so a round's ratio compares
    # the two under the same machine load; the median of those is the headline figure
    # (a shared VM's speed drifts between rounds by more than the difference measured).
    ratios = [s / b for b, s in zip(results["bare"], results["secured"], strict=True)]
    ratio = statistics.median(ratios)
    return {
        "tool": results["tool"][0],
        "workers": args.workers,
        "connections": args.connections,
        "duration_s": args.duration,
        "rounds": args.rounds,
        "bare_rps": [round(x) for x in results["bare"]],
        "secured_rps": [round(x) for x in results["secured"]],
        "bare_median_rps": round(bare),
        "secured_median_rps": round(secured),
        "bare_cpu_us_per_request": round(statistics.median(results["bare_cpu"])),
        "secured_cpu_us_per_request": round(statistics.median(results["secured_cpu"])),
        "round_ratios": [round(x, 3) for x in ratios],
        "ratio": round(ratio, 3),
        "ratio_of_medians": round(secured / bare, 3),
        "target": TARGET_RATIO,
        "target_met": ratio >= TARGET_RATIO,
    }


def main(argv: list[str] | None = None) -> int:
    """Run the side-by-side benchmark; exit status 1 when the ratio misses the target."""
    from devtools.redis_server import RedisServer

    args = _parse(list(sys.argv[1:] if argv is None else argv))
    work = Path(tempfile.mkdtemp(prefix="bench-secured-"))
    redis_server = RedisServer(work)
    redis_server.start()
    env = {
        "FLASK_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "REDIS_URL": redis_server.url,
        "FORCE_HTTPS": "false",  # plain http on loopback; no proxy in front
        "TRUSTED_PROXY_COUNT": "0",
        "WEB_CONCURRENCY": str(args.workers),
    }
    servers: list[GunicornServer] = []
    try:
        key = _create_key(env)
        bare = GunicornServer(env, None, work / "bare.log", app="bench.secured:hello_app", ready_path="/")
        servers.append(bare.start(timeout=30))
        servers.append(GunicornServer(env, None, work / "gateway.log").start(timeout=30))
        assert redis_server.process is not None
        report = _report(args, _measure(args, servers[0], servers[1], key, redis_server.process.pid))
    finally:
        for server in servers:
            server.stop()
        redis_server.stop()
    if args.json:
        print(json.dumps(report))
    else:
        for name, value in report.items():
            print(f"{name:>20}: {value}")
    return 0 if report["target_met"] else 1


if __name__ == "__main__":
    sys.exit(main())
