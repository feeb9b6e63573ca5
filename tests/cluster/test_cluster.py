"""The gateway on a real Redis Cluster (3 primaries, 3 replicas): keys, events, exact limits,
metrics, every script on one slot, the key migration, and a primary's failover."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from redis.cluster import RedisCluster

from auth import keys, users
from auth.loaders import pepper
from auth.scopes import ALL_SCOPES
from core import keymigration
from core.redis import KEYS
from devtools.redis_cluster import Cluster
from gateway import create_app
from tests.support import script_calls
from tests.support.instances import session_login_logout, stream_and_resume

pytestmark = pytest.mark.topology


@pytest.fixture
def client(cluster_app: Flask) -> FlaskClient:
    return cluster_app.test_client()


@pytest.fixture
def bearer(cluster_app: Flask, rc: RedisCluster) -> Callable[..., tuple[str, dict[str, str]]]:
    def make(scopes: list[str] | None = None, **fields: str) -> tuple[str, dict[str, str]]:
        scopes = list(ALL_SCOPES) if scopes is None else scopes
        record, secret = keys.create_key(rc, pepper=pepper(cluster_app), name="c", scopes=scopes, **fields)
        return record["id"], {"Authorization": f"Bearer {secret}"}

    return make


def test_the_keys_spread_over_the_shards(
    rc: RedisCluster, bearer: Callable[..., tuple[str, dict[str, str]]]
) -> None:
    ids = [bearer()[0] for _ in range(30)]
    assert len({rc.get_node_from_key(KEYS.key_record(i)).port for i in ids}) == 3  # per-identity tags


def test_a_key_works_and_is_refused_within_a_second_of_revocation(
    client: FlaskClient, rc: RedisCluster, bearer: Callable[..., tuple[str, dict[str, str]]]
) -> None:
    key_id, headers = bearer()
    assert client.get("/events", headers=headers).status_code == 200
    assert client.get("/events", headers=headers).status_code == 200  # the known key: one call
    keys.revoke_key(rc, key_id)
    revoked_at = time.monotonic()
    while client.get("/events", headers=headers).status_code != 401:
        assert time.monotonic() - revoked_at < 1.0
    wrong = {"Authorization": "Bearer " + keys.generate_secret()}
    assert client.get("/events", headers=wrong).status_code == 401


def test_the_two_call_lookup_answers_none_alike(cluster_app: Flask, rc: RedisCluster) -> None:
    key_pepper = pepper(cluster_app)
    made = {
        n: keys.create_key(rc, pepper=key_pepper, name=n, scopes=[], expires_in_days=d)
        for n, d in (("live", None), ("revoked", None), ("expired", -1))
    }
    keys.revoke_key(rc, made["revoked"][0]["id"])
    assert keys.lookup(rc, made["live"][1], pepper(cluster_app))["id"] == made["live"][0]["id"]  # type: ignore[index]
    for secret in (keys.generate_secret(), made["revoked"][1], made["expired"][1]):
        key_digest = keys.digest(secret, pepper(cluster_app))
        key_id = rc.get(keys.digest_key(key_digest)) or ""
        assert keys.check_digest(rc, key_id, key_digest) is None  # the same nil for all three


def test_rotation_keeps_the_old_secret_for_its_grace(
    cluster_app: Flask,
    client: FlaskClient,
    rc: RedisCluster,
    bearer: Callable[..., tuple[str, dict[str, str]]],
) -> None:
    key_id, old = bearer()
    _, secret = keys.rotate_key(rc, key_id, pepper=pepper(cluster_app), grace_seconds=60)  # type: ignore[misc]
    assert client.get("/events", headers={"Authorization": f"Bearer {secret}"}).status_code == 200
    assert client.get("/events", headers=old).status_code == 200
    keys.rotate_key(rc, key_id, pepper=pepper(cluster_app))
    assert client.get("/events", headers={"Authorization": f"Bearer {secret}"}).status_code == 401


def test_events_with_an_idempotency_key(
    client: FlaskClient, bearer: Callable[..., tuple[str, dict[str, str]]]
) -> None:
    _, writer = bearer(["events:read", "events:write"])
    idem = {**writer, "Idempotency-Key": uuid.uuid4().hex}
    first = client.post("/events", json={"event_type": "order.created"}, headers=idem)
    again = client.post("/events", json={"event_type": "order.created"}, headers=idem)
    assert first.status_code == 201 and again.get_json()["event_id"] == first.get_json()["event_id"]
    listed = client.get("/events", headers=writer).get_json()["events"]  # the owner's own page
    assert [e["event_id"] for e in listed] == [first.get_json()["event_id"]]


@pytest.mark.parametrize("limit", [5, 12])
def test_a_limit_of_n_allows_exactly_n(
    client: FlaskClient, bearer: Callable[..., tuple[str, dict[str, str]]], limit: int
) -> None:
    _, headers = bearer(rate_limit=f"{limit}/minute")

    def ask(_: int) -> int:
        return client.get("/events", headers=headers).status_code

    with ThreadPoolExecutor(8) as pool:
        statuses = Counter(pool.map(ask, range(limit * 2)))
    assert statuses == {200: limit, 429: limit}


@pytest.mark.parametrize(
    ("per_ip", "per_email", "exact"),
    [
        ("3/minute", "100/minute", "gw:ratelimit:{e:*}:fw:login-email:*"),  # the first group refuses
        ("100/minute", "3/minute", "gw:ratelimit:{ip:*}:fw:login-ip:*"),  # the second: the first's given back
    ],
)
def test_login_limits_across_slot_groups_stay_exact(
    cluster_app: Flask, rc: RedisCluster, per_ip: str, per_email: str, exact: str
) -> None:
    # Login limits are counted by IP ({ip:..}) and by e-mail ({e:..}): two slot groups.
    cluster_app.config.update(RATELIMIT_LOGIN=per_ip, RATELIMIT_LOGIN_EMAIL=per_email)
    users.create_user(rc, email="ops@example.com", password="correct horse battery staple 9")
    client = cluster_app.test_client()
    wrong = {"email": "ops@example.com", "password": "not the password at all"}
    site: dict[str, Any] = {"headers": {"Origin": "https://localhost"}, "base_url": "https://localhost"}
    statuses = [client.post("/auth/login", json=wrong, **site).status_code for _ in range(5)]
    assert statuses == [401, 401, 401, 429, 429]
    # The refused attempts took nothing from the other group's limit.
    (counter,) = list(rc.scan_iter(exact))
    assert int(rc.get(counter)) == 3


def test_metrics(client: FlaskClient, bearer: Callable[..., tuple[str, dict[str, str]]]) -> None:
    _, headers = bearer()
    assert client.get("/events", headers=headers).status_code == 200
    answer = client.get("/metrics", headers=headers)
    assert answer.status_code == 200, answer.get_data(as_text=True)[:300]


def test_every_script_keeps_to_one_slot_on_the_cluster(
    cluster_app: Flask, rc: RedisCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    with script_calls.recording(monkeypatch) as calls, cluster_app.app_context():
        script_calls.exercise(cluster_app, cluster_app.test_client(), rc, pepper(cluster_app))
    ran = {source for source, _ in calls}
    assert not ran & script_calls.standalone_only()
    assert script_calls.cluster_only() <= ran
    assert script_calls.slot_violations(calls) == []


def test_migrate_keys_on_the_cluster(rc: RedisCluster) -> None:
    rc.hset("gw:keys:record:key_1", mapping={"id": "key_1"})
    rc.set("gw:keys:digest:abc", "key_1", ex=600)
    first = keymigration.migrate_keys(rc)
    assert first.moved == 2 and not first.conflicts
    assert rc.hget(KEYS.key_record("key_1"), "id") == "key_1" and 0 < rc.ttl(KEYS.key_digest("abc")) <= 600
    assert keymigration.migrate_keys(rc).moved == 0


def _replica_of(redis_cluster: Cluster, primary_port: int) -> int:
    info = redis_cluster.cli(primary_port, "info", "replication")
    line = next(line for line in info.splitlines() if line.startswith("slave0:"))
    return int(line.split("port=")[1].split(",")[0])


def test_wait_goes_to_the_written_slots_primary(
    test_env: dict[str, str],
    redis_cluster: Cluster,
    rc: RedisCluster,
    bearer: Callable[..., tuple[str, dict[str, str]]],
) -> None:
    """REDIS_WAIT_REPLICAS=1 on a cluster (before the kill below: every primary has a
    replica): an event is acknowledged once the replica of the events' primary has it,
    and answers 503 (error shape) while that replica cannot ack."""
    env = {"REDIS_URL": redis_cluster.url, "JOBS_REDIS_URL": test_env["REDIS_URL"]}
    app = create_app({**test_env, **env, "REDIS_WAIT_REPLICAS": "1", "REDIS_WAIT_TIMEOUT_MS": "200"})
    client = app.test_client()
    _, headers = bearer(["events:write"])
    assert client.post("/events", json={"event_type": "a"}, headers=headers).status_code == 201
    primary = int(rc.get_node_from_key(KEYS.events_stream()).port)
    replica = redis_cluster.processes[_replica_of(redis_cluster, primary)]
    os.kill(replica.pid, signal.SIGSTOP)  # it stops acknowledging the primary's stream
    try:
        answer = client.post("/events", json={"event_type": "b"}, headers=headers)
    finally:
        os.kill(replica.pid, signal.SIGCONT)
    assert answer.status_code == 503, answer.get_data(as_text=True)
    assert answer.get_json()["status_code"] == 503 and answer.headers["Retry-After"] == "1"
    redis_cluster.wait_ok()
    assert client.post("/events", json={"event_type": "c"}, headers=headers).status_code == 201


def test_migrate_keys_watch_moves_what_old_instances_write_later(
    cluster_app: Flask, rc: RedisCluster
) -> None:
    # An old instance still serving after the first pass writes an old-layout key: the
    # watching run moves it on a later pass, without a second run by hand.
    def old_instance() -> None:
        time.sleep(0.5)
        rc.hset("gw:keys:record:key_late", mapping={"id": "key_late"})

    writer = threading.Thread(target=old_instance)
    writer.start()
    result = cluster_app.test_cli_runner().invoke(
        args=["redis", "migrate-keys", "--watch", "1.5", "--interval", "0.2"]
    )
    writer.join()
    assert result.exit_code == 0, result.output
    assert rc.hget(KEYS.key_record("key_late"), "id") == "key_late" and not rc.exists(
        "gw:keys:record:key_late"
    )
    assert "moved 1 keys in all over 1.5 s" in result.output


def test_a_primary_killed_mid_traffic_gives_503s_not_500s_and_recovers(
    redis_cluster: Cluster,
    cluster_app: Flask,
    rc: RedisCluster,
    bearer: Callable[..., tuple[str, dict[str, str]]],
) -> None:
    key_id, headers = bearer(rate_limit="1000000/minute")
    client = cluster_app.test_client()
    assert client.get("/events", headers=headers).status_code == 200
    victim = int(rc.get_node_from_key(KEYS.key_record(key_id)).port)
    statuses: list[tuple[float, int]] = []
    stop = threading.Event()

    def traffic() -> None:
        while not stop.is_set():
            answer = client.get("/events", headers=headers)
            status = answer.status_code
            if status != 200 and (answer.get_json() or {}).get("status_code") != status:
                status = -status  # not the contract's error shape: fails the test below
            statuses.append((time.monotonic(), status))
            time.sleep(0.01)

    worker = threading.Thread(target=traffic)
    worker.start()
    time.sleep(0.5)
    killed_at = time.monotonic()
    redis_cluster.kill(victim)
    deadline = killed_at + 30
    while time.monotonic() < deadline:
        after = [s for t, s in statuses if t > killed_at]
        if after.count(503) and after[-5:] == [200] * 5:
            break
        time.sleep(0.1)
    stop.set()
    worker.join(timeout=10)
    after = [(t, s) for t, s in statuses if t > killed_at]
    codes = Counter(s for _, s in after)
    assert set(codes) <= {200, 503}, codes
    recovered = next((t for t, s in reversed(after) if s != 200), killed_at)
    recovery = recovered - killed_at
    print(
        f"\nfailover: {codes[503]} answers 503, {codes[200]} 200; back to 200 {recovery:.1f} s after SIGKILL"
    )
    assert [s for _, s in after[-5:]] == [200] * 5, "no recovery within 30 s"
    assert recovery < 30


def test_an_agent_stream_on_the_cluster(
    client: FlaskClient, bearer: Callable[..., tuple[str, dict[str, str]]]
) -> None:
    _, headers = bearer()
    session = client.post("/agents/session", headers=headers).get_json()["session_id"]
    body = {"session_id": session, "role": "user", "content": "What is the weather like?"}
    assert client.post("/agents/message", json=body, headers=headers).status_code == 200
    response = client.get(f"/agents/stream?session_id={session}", headers=headers, buffered=False)
    text = response.get_data(as_text=True)
    response.close()
    assert response.status_code == 200 and '"type": "done"' in text.replace('":"', '": "')
    messages = client.get(f"/agents/session/{session}/messages", headers=headers).get_json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"]


def test_the_fastpath_switch_keeps_redis_on_the_cluster_client(
    test_env: dict[str, str], redis_cluster: Cluster, bearer: Callable[..., tuple[str, dict[str, str]]]
) -> None:
    from gateway.ratelimit.backend import decider
    from gateway.ratelimit.decision import ScriptTransport

    env = {
        "REDIS_URL": redis_cluster.url,
        "JOBS_REDIS_URL": test_env["REDIS_URL"],
        "GATEWAY_FASTPATH": "true",
    }
    app = create_app({**test_env, **env})
    with app.app_context():
        assert isinstance(decider().transport, ScriptTransport)
    _, headers = bearer(rate_limit="3/minute")
    client = app.test_client()
    assert [client.get("/events", headers=headers).status_code for _ in range(4)] == [200, 200, 200, 429]


def test_a_stream_resumes_on_the_cluster(
    client: FlaskClient, bearer: Callable[..., tuple[str, dict[str, str]]]
) -> None:
    stream_and_resume(client, bearer()[1])


def test_an_admin_session_on_the_cluster(cluster_app: Flask) -> None:
    session_login_logout(cluster_app)
