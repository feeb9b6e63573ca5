"""Exact limits across two gunicorn instances of two workers each on a real Redis Cluster
(tests/test_sentinel.py does the same on a Sentinel set): instances share only Redis."""

from __future__ import annotations

import http.client
import json
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable

import pytest

from auth import keys
from auth.loaders import pepper
from auth.scopes import ALL_SCOPES
from core.redis import KEYS, create_redis
from devtools.gunicorn import GunicornServer
from devtools.redis_cluster import Cluster
from gateway import create_app
from tests.support.instances import exact_on

pytestmark = [pytest.mark.topology, pytest.mark.gunicorn]


def test_exact_across_two_instances_on_a_cluster(
    redis_cluster: Cluster, gunicorn: Callable[..., GunicornServer], test_env: dict[str, str]
) -> None:
    # RQ's queue stays on the suite's standalone server (JOBS_REDIS_URL is required beside a cluster).
    exact_on(redis_cluster.url, {"JOBS_REDIS_URL": test_env["REDIS_URL"]}, gunicorn, test_env)


ROUND = (("POST", "/events", b'{"event_type": "f"}'), ("GET", "/auth/me", None))


def _call(
    base: str, method: str, path: str, headers: dict[str, str], body: bytes | None = None
) -> tuple[int, dict]:
    conn = http.client.HTTPConnection(base.removeprefix("http://"), timeout=10)  # a hang fails the test
    try:
        conn.request(method, path, body=body, headers={**headers, "Content-Type": "application/json"})
        answer = conn.getresponse()
        return answer.status, json.loads(answer.read() or b"{}")
    finally:
        conn.close()


def test_a_primary_killed_under_gunicorn_loses_no_acknowledged_event(
    redis_cluster: Cluster, gunicorn: Callable[..., GunicornServer], test_env: dict[str, str]
) -> None:
    """Last in this module (it leaves a shard without its replica). Two workers, events with
    an Idempotency-Key and authenticated reads flowing; the events' primary is SIGKILLed."""
    env = {**test_env, "REDIS_URL": redis_cluster.url, "JOBS_REDIS_URL": test_env["REDIS_URL"]}
    rc = create_redis(redis_cluster.url)
    _, secret = keys.create_key(rc, pepper=pepper(create_app(env)), name="f", scopes=list(ALL_SCOPES),
                                rate_limit="1000000/minute")  # fmt: skip
    headers = {"Authorization": f"Bearer {secret}"}
    base = gunicorn(workers=2, env=env).url
    acknowledged: set[str] = set()
    statuses: list[tuple[float, int]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            idem = {**headers, "Idempotency-Key": uuid.uuid4().hex}
            for method, path, body in (
                ("POST", "/events", b'{"event_type": "f"}'),
                ("GET", "/auth/me", None),
            ):
                status, reply = _call(base, method, path, idem if body else headers, body)
                if status >= 300 and reply.get("status_code") != status:
                    status = -status  # not the contract's error shape
                if status == 201:
                    acknowledged.add(reply["event_id"])
                statuses.append((time.monotonic(), status))

    worker = threading.Thread(target=traffic)
    worker.start()
    time.sleep(1.0)
    killed_at = time.monotonic()
    redis_cluster.kill(int(rc.get_node_from_key(KEYS.events_stream()).port))
    while time.monotonic() < killed_at + 30:
        after = [s for t, s in statuses if t > killed_at]
        if 503 in after and len(after) > 10 and all(200 <= s < 300 for s in after[-10:]):
            break
        time.sleep(0.1)
    stop.set()
    worker.join(timeout=15)
    after = [(t, s) for t, s in statuses if t > killed_at]
    codes = Counter(s for _, s in after)
    assert set(codes) <= {200, 201, 503}, codes
    assert all(200 <= s < 300 for _, s in after[-10:]), "no recovery within 30 s"
    recovery = next((t for t, s in reversed(after) if s == 503), killed_at) - killed_at
    seen: set[str] = set()
    cursor = ""
    while True:
        status, page = _call(base, "GET", f"/events?limit=100{'&after=' + cursor if cursor else ''}", headers)
        assert status == 200
        if not page["events"]:
            break
        seen.update(e["event_id"] for e in page["events"])
        cursor = page["events"][-1]["event_id"]
    lost = acknowledged - seen
    print(f"\ngunicorn failover: {codes[503]} answers 503, back {recovery:.1f} s after SIGKILL, "
          f"{len(acknowledged)} events acknowledged, {len(lost)} lost")  # fmt: skip
    assert not lost
