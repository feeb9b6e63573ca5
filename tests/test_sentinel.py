"""The gateway on a Sentinel-watched Redis, WAIT, and a real failover.

One primary, one replica and three sentinels per module (tests/support/topology.py); the
failover test kills a primary, so it gets a set of its own.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient

from auth import keys
from auth.loaders import pepper
from auth.scopes import ALL_SCOPES
from devtools.gunicorn import GunicornServer
from gateway import create_app
from tests.support.instances import exact_on, session_login_logout, stream_and_resume
from tests.support.topology import Replica, SentinelSet, start_sentinel_set

pytestmark = pytest.mark.topology

ERROR_FIELDS = {"error", "status_code", "message", "path"}
LOTS = "100000/minute"  # the flow of events must never meet a 429


@pytest.fixture(scope="module")
def sentinels(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelSet]:
    topology = start_sentinel_set(tmp_path_factory.mktemp("sentinel"))
    yield topology
    topology.stop()


def _app(url: str, **env: str) -> Flask:
    return create_app({"FLASK_ENV": "testing", "REDIS_URL": url, "RATELIMIT_DEFAULT": LOTS, **env})


def _key(app: Flask, scopes: tuple[str, ...] = ALL_SCOPES) -> dict[str, str]:
    with app.app_context():
        r = app.extensions["gateway.redis"]
        _, secret = keys.create_key(r, pepper=pepper(app), name="topology", scopes=list(scopes))
    return {"Authorization": f"Bearer {secret}"}


def test_the_app_on_a_sentinel_url(sentinels: SentinelSet) -> None:
    app = _app(sentinels.url)
    client = app.test_client()
    admin = _key(app)

    scopes = ["events:read", "events:write", "jobs:read", "jobs:write"]
    made = client.post("/admin/keys", json={"name": "s", "scopes": scopes}, headers=admin)
    assert made.status_code == 201, made.get_json()
    key = {"Authorization": f"Bearer {made.get_json()['key']}"}
    assert client.get("/events", headers=key).status_code == 200

    idem = {**key, "Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/events", json={"event_type": "t", "data": {"n": 1}}, headers=idem)
    again = client.post("/events", json={"event_type": "t", "data": {"n": 1}}, headers=idem)
    assert first.status_code == again.status_code == 201
    assert first.get_json()["event_id"] == again.get_json()["event_id"]
    listed = client.get("/events", headers=key).get_json()["events"]
    assert first.get_json()["event_id"] in [e["event_id"] for e in listed]

    queued = client.post("/jobs", json={"name": "agent.run", "args": {"prompt": "hi"}}, headers=key)
    assert queued.status_code == 202, queued.get_json()
    assert client.get(f"/jobs/{queued.get_json()['job_id']}", headers=key).status_code == 200

    assert client.delete(f"/admin/keys/{made.get_json()['id']}", headers=admin).status_code == 200
    deadline = time.monotonic() + 1.0
    while client.get("/events", headers=key).status_code != 401:
        assert time.monotonic() < deadline, "a revoked key was still served after 1 s"
        time.sleep(0.05)

    ready = client.get("/readyz")
    body = ready.get_json()
    assert ready.status_code == 200 and body["ready"] is True
    assert body["topology"] == body["checks"]["redis"]["topology"] == "sentinel"
    assert body["checks"]["redis"]["sentinels"] == {"configured": 3, "reachable": 3}
    assert body["checks"]["redis"]["primaries"] == [
        {"address": f"127.0.0.1:{sentinels.primary.port}", "reachable": True}
    ]


def test_writes_wait_for_the_replica(sentinels: SentinelSet) -> None:
    app = _app(sentinels.url, REDIS_WAIT_REPLICAS="1")
    client = app.test_client()
    headers = _key(app)
    posted = client.post("/events", json={"event_type": "durable"}, headers=headers)
    assert posted.status_code == 201, posted.get_json()
    assert client.post("/admin/keys", json={"name": "w"}, headers=headers).status_code == 201
    job = client.post("/jobs", json={"name": "agent.run", "args": {"prompt": "x"}}, headers=headers)
    assert job.status_code == 202


def test_too_few_replicas_answer_503_in_the_error_shape(sentinels: SentinelSet, redis_url: str) -> None:
    # Two replicas asked of a set with one; and one asked of a lone server.
    for url, replicas in ((sentinels.url, "2"), (redis_url, "1")):
        app = _app(url, REDIS_WAIT_REPLICAS=replicas, REDIS_WAIT_TIMEOUT_MS="100")
        client = app.test_client()
        headers = _key(app)
        for method, path, body in (
            ("post", "/events", {"event_type": "lost?"}),
            ("post", "/admin/keys", {"name": "k"}),
            ("post", "/jobs", {"name": "agent.run", "args": {"prompt": "x"}}),
        ):
            answer = getattr(client, method)(path, json=body, headers=headers)
            assert answer.status_code == 503, (url, path, answer.get_json())
            assert set(answer.get_json()) >= ERROR_FIELDS
            assert "replicas" in answer.get_json()["message"]


def test_readyz_names_a_standalone_primary(client: FlaskClient, redis_url: str) -> None:
    body = client.get("/readyz").get_json()
    assert body["topology"] == "standalone"
    port = redis_url.rsplit(":", 1)[1].split("/")[0]
    assert body["checks"]["redis"]["primaries"] == [{"address": f"127.0.0.1:{port}", "reachable": True}]


# --- failover --------------------------------------------------------------------------------


class Poster(threading.Thread):
    """Posts events one after another until stopped; remembers every answer."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        super().__init__(daemon=True)
        self.base, self.headers = base, headers
        self.answers: list[tuple[float, int, dict[str, Any]]] = []
        self.running = True

    def run(self) -> None:
        with requests.Session() as session:
            while self.running:
                status, body = self.post(session)
                self.answers.append((time.monotonic(), status, body))  # when the answer came

    def post(self, session: requests.Session) -> tuple[int, dict[str, Any]]:
        body = {"event_type": "flow", "data": {"n": len(self.answers)}}
        headers = {**self.headers, "Idempotency-Key": uuid.uuid4().hex}
        answer = session.post(f"{self.base}/events", json=body, headers=headers, timeout=10)
        return answer.status_code, answer.json()


def _all_event_ids(base: str, headers: dict[str, str]) -> set[str]:
    found: set[str] = set()
    after = ""
    while True:
        params = {"limit": 100, **({"after": after} if after else {})}
        answer = requests.get(f"{base}/events", params=params, headers=headers, timeout=10)
        events = answer.json()["events"]
        if not events:
            return found
        found.update(e["event_id"] for e in events)
        after = events[-1]["event_id"]


@pytest.mark.gunicorn
def test_failover_under_load_loses_no_acknowledged_event(tmp_path: Path) -> None:
    topology = start_sentinel_set(tmp_path / "set")
    env = {
        "FLASK_ENV": "testing",
        "REDIS_URL": topology.url,
        "REDIS_WAIT_REPLICAS": "1",
        "RATELIMIT_DEFAULT": LOTS,
    }
    server = GunicornServer(env, workers=2, log_path=tmp_path / "gunicorn.log")
    revived: Replica | None = None
    try:
        server.start()
        headers = _key(create_app(env))
        poster = Poster(server.url, headers)
        poster.start()
        time.sleep(1.5)
        old_port, new_port = topology.primary.port, topology.replicas[0].port

        killed = time.monotonic()
        topology.kill_primary()
        promoted = topology.wait_sentinels_agree(new_port)
        # A supervisor brings the dead machine back; it rejoins as the new primary's replica,
        # so REDIS_WAIT_REPLICAS=1 can be met again.
        revived = Replica(tmp_path / "revived", new_port, port=old_port).start()
        topology.wait_replicas(1, port=new_port)
        deadline = killed + 30
        while not any(t > killed and s == 201 for t, s, _ in poster.answers):
            assert time.monotonic() < deadline, "no event was acknowledged within 30 s of the kill"
            time.sleep(0.05)
        time.sleep(1.5)  # the flow goes on after recovery
        poster.running = False
        poster.join(15)

        answers = poster.answers
        statuses = [s for _, s, _ in answers]
        assert 500 not in statuses
        assert set(statuses) <= {201, 503}, sorted(set(statuses))
        for _, status, body in answers:
            if status == 503:
                assert set(body) >= ERROR_FIELDS and body["status_code"] == 503
        first_after = min(t for t, s, _ in answers if t > killed and s == 201)
        last_before = max((t for t, s, _ in answers if t <= killed and s == 201), default=killed)
        acknowledged = {b["event_id"] for _, s, b in answers if s == 201}
        present = _all_event_ids(server.url, headers)
        lost = acknowledged - present
        print(
            f"\nfailover: sentinels all agree {promoted:.2f} s after SIGKILL; first acknowledged write "
            f"{first_after - killed:.2f} s after it (gap {first_after - last_before:.2f} s); "
            f"{statuses.count(503)} answers 503, {statuses.count(201)} acknowledged "
            f"({len(answers)} posts), {len(lost)} acknowledged events missing afterwards"
        )
        assert not lost, f"acknowledged events lost in the failover: {sorted(lost)[:5]}"
        assert server.process is not None and server.process.poll() is None  # never restarted
    finally:
        server.stop()
        if revived is not None:
            revived.stop()
        topology.stop()


def test_the_client_follows_a_promotion_without_a_restart(tmp_path: Path) -> None:
    """The client alone: same object before and after, no reconnect by hand."""
    from core.redis import create_redis

    topology = start_sentinel_set(tmp_path / "set")
    try:
        client = create_redis(topology.url)
        client.set("before", "1")
        assert topology.replicas[0].process is not None
        topology.wait_replicas(1)
        topology.kill_primary()
        topology.wait_sentinels_agree(topology.replicas[0].port)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.set("after", "1")
                break
            except redis.RedisError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert client.get("before") == "1"
        assert client.connection_pool.master_address == ("127.0.0.1", topology.replicas[0].port)
    finally:
        topology.stop()


def test_a_demoted_primary_loses_every_pooled_connection(tmp_path: Path) -> None:
    """A graceful failover turns the primary into a replica: the first READONLY (which
    redis-py's Sentinel connection reports as a ConnectionError) closes the pool's other
    sockets to it too, and the write itself goes to the new primary on redis-py's retry."""
    from core.redis import create_redis

    topology = start_sentinel_set(tmp_path / "set")
    try:
        client = create_redis(topology.url)
        pool = client.connection_pool
        held = [pool.get_connection() for _ in range(4)]  # four sockets to the primary
        for conn in held:
            pool.release(conn)
        old = redis.Redis(port=topology.primary.port, decode_responses=True)
        assert len(old.client_list(_type="normal")) >= 4
        with topology.sentinels[0].client() as sentinel:
            sentinel.execute_command("SENTINEL", "FAILOVER", "gwmaster")
        topology.wait_sentinels_agree(topology.replicas[0].port)
        # The sentinels demote the old primary within some seconds; done here at once.
        old.replicaof("127.0.0.1", topology.replicas[0].port)
        client.set("after", "1")  # READONLY on an old socket, then the retry on the new primary
        assert redis.Redis(port=topology.replicas[0].port).get("after") == b"1"
        names = [c.get("name") for c in old.client_list(_type="normal")]
        assert "gateway" not in names, names
        old.close()
    finally:
        topology.stop()


def test_a_job_runs_through_a_worker_on_the_sentinel_set(sentinels: SentinelSet) -> None:
    app = _app(sentinels.url, REDIS_WAIT_REPLICAS="1")
    client = app.test_client()
    headers = _key(app)
    queued = client.post("/jobs", json={"name": "agent.run", "args": {"prompt": "hi"}}, headers=headers)
    assert queued.status_code == 202
    result = app.test_cli_runner().invoke(args=["jobs", "worker", "--burst"])
    assert result.exit_code == 0, result.output
    job = client.get(f"/jobs/{queued.get_json()['job_id']}", headers=headers).get_json()
    assert job["status"] == "finished", job


def test_jobs_redis_url_puts_the_queue_on_its_own_redis(
    sentinels: SentinelSet, redis_url: str, r: redis.Redis
) -> None:
    app = _app(redis_url, JOBS_REDIS_URL=sentinels.url)
    client = app.test_client()
    headers = _key(app)
    queued = client.post("/jobs", json={"name": "agent.run", "args": {"prompt": "hi"}}, headers=headers)
    assert queued.status_code == 202
    job_id = queued.get_json()["job_id"]
    primary = redis.Redis(port=sentinels.primary.port)
    assert primary.exists(f"rq:job:{job_id}") and not r.exists(f"rq:job:{job_id}")
    assert client.get(f"/jobs/{job_id}", headers=headers).status_code == 200
    primary.close()


def test_a_dead_sentinel_costs_no_wait(tmp_path: Path) -> None:
    """The sentinels are asked in turn, each once, with the short timeouts."""
    from core.redis import create_redis, primaries

    topology = start_sentinel_set(tmp_path / "set")
    try:
        topology.sentinels[0].stop()
        client = create_redis(topology.url)
        started = time.monotonic()
        client.set("k", "1")  # a new connection: the primary is asked of the sentinels
        report = primaries(client)
        assert time.monotonic() - started < 1.0
        assert report["sentinels"] == {"configured": 3, "reachable": 2}
        assert report["primaries"] == [{"address": f"127.0.0.1:{topology.primary.port}"}]
    finally:
        topology.stop()


def test_wait_runs_on_the_connection_of_the_writes(sentinels: SentinelSet) -> None:
    """MONITOR names each command's client socket: the script, the MULTI block and the WAIT
    of one replicated() block all come from one, and a write outside it from another."""
    from core.redis import create_redis, replicated

    client = create_redis(sentinels.url, wait_replicas=1)
    client.ping()
    entries: list[dict[str, Any]] = []
    with redis.Redis(port=sentinels.primary.port, decode_responses=True).monitor() as monitor:
        with replicated(client):
            client.eval("return redis.call('SET', KEYS[1], 'v')", 1, "wait:script")
            with client.pipeline(transaction=True) as pipe:
                pipe.set("wait:multi", "1").incr("wait:count").execute()
        client.set("wait:outside", "1")
        for entry in monitor.listen():
            if entry.get("client_type") != "lua":  # a script's own commands name no socket
                entries.append(entry)
            if "wait:outside" in entry["command"]:
                break
    socket = {e["command"].split(" ", 1)[0]: (e["client_address"], e["client_port"]) for e in entries}
    ours = [
        e for e in entries if e["command"].split(" ", 1)[0] in ("EVAL", "MULTI", "INCRBY", "EXEC", "WAIT")
    ]
    assert {e["command"].split(" ", 1)[0] for e in ours} == {"EVAL", "MULTI", "INCRBY", "EXEC", "WAIT"}
    assert len({(e["client_address"], e["client_port"]) for e in ours}) == 1, ours
    assert socket["WAIT"] != (entries[-1]["client_address"], entries[-1]["client_port"])
    client.close()


def test_no_wait_is_sent_by_default(client: FlaskClient, auth_headers: Any, r: redis.Redis) -> None:
    """REDIS_WAIT_REPLICAS=0: an acknowledged write costs no extra command."""
    before = r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0)
    headers = auth_headers("events:write")
    assert client.post("/events", json={"event_type": "x"}, headers=headers).status_code == 201
    assert r.info("commandstats").get("cmdstat_wait", {}).get("calls", 0) == before


def test_each_thread_pins_its_own_connection(sentinels: SentinelSet) -> None:
    """Two blocks at once, in two threads: each runs on its own socket from start to WAIT."""
    from core.redis import create_redis, replicated

    client = create_redis(sentinels.url, wait_replicas=1)
    inside = threading.Barrier(2, timeout=5)
    ids: dict[str, list[int]] = {}

    def block(name: str) -> None:
        with replicated(client):
            first = client.client_id()
            inside.wait()  # both threads are inside a block now
            client.set(f"pin:{name}", name)
            ids[name] = [first, client.client_id()]

    threads = [threading.Thread(target=block, args=(n,)) for n in ("a", "b")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert ids["a"][0] == ids["a"][1] and ids["b"][0] == ids["b"][1]
    assert ids["a"][0] != ids["b"][0]
    client.close()


@pytest.mark.gunicorn
def test_exact_across_two_instances_on_sentinel(
    sentinels: SentinelSet, gunicorn: Callable[..., GunicornServer], test_env: dict[str, str]
) -> None:
    exact_on(sentinels.url, {}, gunicorn, test_env)


def test_a_stream_resumes_on_sentinel(sentinels: SentinelSet) -> None:
    app = _app(sentinels.url)
    stream_and_resume(app.test_client(), _key(app))


def test_an_admin_session_on_sentinel(sentinels: SentinelSet) -> None:
    session_login_logout(_app(sentinels.url))
