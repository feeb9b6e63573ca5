"""The many-keys case: N distinct API keys, each with its own small limit, cycled round-robin.

One key per request is what a multi-tenant gateway sees: every key has its own
counters, its own lease (if any) and its own entry in each worker's key cache, so
the per-key costs that one hot key amortises show here. For each N the bench
measures bare Flask and the secured ``GET /auth/me`` in paired rounds, both loaded
by the same generator script (the bare app ignores the header), and reports the
ratio, both p99s and the Redis commands per request (``INFO stats``
``total_commands_processed`` before and after, over the requests served).

Each key gets ``600/minute``; when N is so small that the run could spend more than
that on one key, the limit is raised to what the run can spend (``tenant_limit`` in
the report), so no request is ever refused and every figure is of served requests.
"""

from __future__ import annotations

import contextlib
import math
import statistics
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

from bench import load as loads

if TYPE_CHECKING:
    from bench.secured import Bench

TENANT_LIMIT_PER_MINUTE = 600
# Generous ceiling of the secured requests/s on one machine, to size limits for small N.
SPEND_CEILING_RPS = 6000
# A cautious floor of the secured requests/s, to size the warm-up for large N.
WARM_UP_RPS = 1000


def create_keys(
    env: Mapping[str, str],
    count: int,
    *,
    rate_limit: str,
    quota: str | None = None,
    scopes: Iterable[str] = ("events:write",),
) -> list[str]:
    """``count`` keys made by the gateway's own key code in this one process; their secrets."""
    from auth import keys
    from auth.loaders import pepper
    from core.redis import redis_from_config
    from gateway import create_app

    # The app logs its start-up to stdout; keep stdout for the report (``--json``).
    with contextlib.redirect_stdout(sys.stderr):
        app = create_app(dict(env))
    r = redis_from_config(app.config)
    with app.app_context():
        peppered = pepper(app)
        return [
            keys.create_key(
                r, pepper=peppered, name=f"bench-{n}", scopes=list(scopes), rate_limit=rate_limit, quota=quota
            )[1]
            for n in range(count)
        ]


def tenant_limit(count: int, seconds: float) -> int:
    """Units per minute per key: 600, or what a run of ``seconds`` could spend on one key."""
    per_key = SPEND_CEILING_RPS * seconds / count
    return max(TENANT_LIMIT_PER_MINUTE, math.ceil(per_key))


def _round(bench: Bench, bare: loads.Target, secured: loads.Target) -> dict[str, float]:
    row = {**bench.measure("bare", bench.bare, bare), **bench.measure("secured", bench.gateway, secured)}
    row["ratio"] = row["secured_rps"] / row["bare_rps"]
    row["p99_ratio"] = row["secured_p99_ms"] / row["bare_p99_ms"]
    return row


def measure(bench: Bench, env: Mapping[str, str], count: int) -> dict[str, object]:
    """Paired rounds of bare vs secured with ``count`` keys cycled; the medians of the rounds."""
    args = bench.args
    seconds = (args.rounds + 1) * args.duration + 2 * count * args.workers / WARM_UP_RPS  # with the warm-up
    limit = tenant_limit(count, seconds)
    secrets = create_keys(env, count, rate_limit=f"{limit}/minute")
    return {"tenants": count, "tenant_limit": f"{limit}/minute", **_measure_keys(bench, secrets)}


def measure_stored(
    bench: Bench, env: Mapping[str, str], stored: int, cycled: int = 1000
) -> dict[str, object]:
    """With ``stored`` more keys in Redis: memory per key, and ``cycled`` of them measured."""
    used_before = _used_memory(bench.redis_urls)
    secrets = create_keys(env, stored, rate_limit=f"{TENANT_LIMIT_PER_MINUTE}/minute")
    per_key = (_used_memory(bench.redis_urls) - used_before) / stored
    row = _measure_keys(bench, secrets[:cycled])
    return {"stored_keys": stored, "redis_bytes_per_key": round(per_key), "tenants": cycled, **row}


def _used_memory(urls: list[str]) -> int:
    """``used_memory`` summed over the Redis nodes (replicas included on a cluster)."""
    import redis

    total = 0
    for url in urls:
        client = redis.Redis.from_url(url)
        try:
            total += int(client.info("memory")["used_memory"])
        finally:
            client.close()
    return total


def _measure_keys(bench: Bench, secrets: list[str]) -> dict[str, object]:
    args = bench.args
    bare = loads.Target(f"http://127.0.0.1:{bench.bare.port}/", keys=secrets)
    secured = loads.Target(f"http://127.0.0.1:{bench.gateway.port}/auth/me", keys=secrets)
    # Warm-up: every worker sees every key (twice, on average), as a steady state has them
    # cached; 10,000 keys need longer than one measurement at a thousand requests a second.
    warm_up = max(args.duration, math.ceil(2 * len(secrets) * args.workers / WARM_UP_RPS))
    bench.load(secured, warm_up, args.connections)
    rows = [_round(bench, bare, secured) for _ in range(args.rounds)]

    def median(field: str) -> float:
        return round(statistics.median(row[field] for row in rows), 3)

    return {
        "bare_median_rps": round(median("bare_rps")),
        "secured_median_rps": round(median("secured_rps")),
        "ratio": median("ratio"),
        "bare_p99_ms": median("bare_p99_ms"),
        "secured_p99_ms": median("secured_p99_ms"),
        "p99_ratio": median("p99_ratio"),
        "redis_commands_per_request": median("secured_redis_commands"),
        "redis_round_trips_per_request": median("secured_redis_scripts"),
        **(
            {"secured_in_app_p99_ms": median("secured_in_app_p99_ms")}
            if "secured_in_app_p99_ms" in rows[0]
            else {}
        ),
        "secured_cpu_us_per_request": round(median("secured_cpu_us")),
        "round_ratios": [round(row["ratio"], 3) for row in rows],
    }
