"""The Redis fault matrix (docs/operations.md): each way a real redis-server can refuse the
gateway, what the gateway answers meanwhile, and that it heals by itself when Redis does.

Every test here runs against this module's own redis-server (``fault_redis``), never the
suite's shared one, because the faults (REPLICAOF, maxmemory, CLIENT PAUSE, a busy script,
a slow reload) would break every other test using it.
"""

from __future__ import annotations

import contextlib
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import redis
import requests
from flask import Flask
from flask.testing import FlaskClient
from redis.backoff import NoBackoff
from redis.retry import Retry

from auth import keys, public, users
from auth.loaders import pepper
from core.extensions import get_redis
from core.redis import RedisRefusedError, create_redis, failure_label, is_unavailable
from devtools.gunicorn import GunicornServer
from devtools.redis_server import RedisServer, free_port
from gateway import create_app

EMAIL = "faults@example.com"
PASSWORD = "correct horse battery staple 7"
ORIGIN = "http://localhost"  # the Flask test client's host_url
# A hang bound, not a speed target: every answer during a fault comes within it.
ANSWER_WITHIN = 3.0
HEAL_WITHIN = 10.0


@pytest.fixture(scope="module")
def fault_redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("fault-redis")).start()
    yield server
    server.stop()


def end_every_fault(admin: redis.Redis) -> None:
    """Undo whatever a test did to the server, so the next one starts from a healthy primary."""
    admin.execute_command("CLIENT", "UNPAUSE")
    admin.execute_command("REPLICAOF", "NO", "ONE")
    admin.config_set("maxmemory", 0)
    admin.config_set("replica-serve-stale-data", "yes")
    admin.config_set("lua-time-limit", 5000)


@pytest.fixture
def admin(fault_redis: RedisServer) -> Iterator[redis.Redis]:
    """A direct client to the fault server (not the gateway's): causes and ends the faults."""
    client = redis.Redis.from_url(fault_redis.url, decode_responses=True)
    end_every_fault(client)
    client.flushall()
    yield client
    try:
        end_every_fault(client)
    finally:
        client.close()


@dataclass
class Gateway:
    """A testing app on the fault server, with a stored key and admin user."""

    app: Flask
    client: FlaskClient
    headers: dict[str, str]


def fault_env(fault_redis: RedisServer) -> dict[str, str]:
    return {
        "FLASK_ENV": "testing",
        "REDIS_URL": fault_redis.url,
        # Short waits: a paused Redis answers each request within ~0.5 s (timeout + one retry).
        "REDIS_SOCKET_TIMEOUT": "0.2",
        "REDIS_CONNECT_TIMEOUT": "0.2",
        "RATELIMIT_DEFAULT": "100000/minute",
        "RATELIMIT_ANONYMOUS": "100000/minute",
        "RATELIMIT_LOGIN": "100000/minute",
        # No leases: every request asks Redis, so a read meets the fault as a write does.
        "RATELIMIT_LEASE_MAX": "1",
    }


def seed(app: Flask, admin: redis.Redis) -> dict[str, str]:
    """A key for the data routes and an admin user for /auth/login, stored on the fault server."""
    _, secret = keys.create_key(
        admin, pepper=pepper(app), name="faults", scopes=["events:read", "events:write"]
    )
    users.create_user(admin, email=EMAIL, password=PASSWORD)
    return {"Authorization": f"Bearer {secret}"}


@pytest.fixture
def gateway(fault_redis: RedisServer, admin: redis.Redis) -> Gateway:
    app = create_app(fault_env(fault_redis))
    return Gateway(app, app.test_client(), seed(app, admin))


Answer = tuple[int, dict[str, object], dict[str, str]]


def ask(gw: Gateway, route: str) -> Answer:
    """One request of the matrix: (status, JSON body, headers)."""
    client = gw.client
    calls: dict[str, Callable[[], object]] = {
        "POST /events": lambda: client.post("/events", json={"event_type": "fault"}, headers=gw.headers),
        "GET /events": lambda: client.get("/events", headers=gw.headers),
        "POST /auth/login": lambda: client.post(
            "/auth/login", json={"email": EMAIL, "password": PASSWORD}, headers={"Origin": ORIGIN}
        ),
        "GET /readyz": lambda: client.get("/readyz"),
    }
    answer = calls[route]()
    return answer.status_code, answer.get_json(silent=True) or {}, dict(answer.headers)  # type: ignore[attr-defined]


WORKING = {"POST /events": 201, "GET /events": 200, "POST /auth/login": 200, "GET /readyz": 200}


def assert_refused(gw: Gateway) -> None:
    """During a fault: 503 in the error shape on every data route, login closed, not ready, alive."""
    for route in WORKING:
        started = time.monotonic()
        status, body, headers = ask(gw, route)
        assert time.monotonic() - started < ANSWER_WITHIN, route
        assert status == 503, (route, status, body)
        if route == "GET /readyz":
            assert body["ready"] is False and body["status"] == "unhealthy"
        else:
            assert body["status_code"] == 503 and body["path"] == route.split()[1], (route, body)
            assert headers.get("Retry-After") == "1", route
    healthz = gw.client.get("/healthz")
    assert healthz.status_code == 200 and healthz.text == "ok"


def assert_working(gw: Gateway) -> None:
    """After the fault: every route answers as usual again, in the same process."""
    answers = {route: ask(gw, route)[0] for route in WORKING}
    assert answers == WORKING


def heal_and_check(gw: Gateway) -> None:
    """The fault has ended: the same app recovers without a restart (and without stale sockets)."""
    deadline = time.monotonic() + HEAL_WITHIN
    while ask(gw, "GET /readyz")[0] != 200:
        assert time.monotonic() < deadline, "the gateway did not heal after Redis did"
        time.sleep(0.1)
    assert_working(gw)


def gateway_client_ids(admin: redis.Redis, db: str) -> set[str]:
    return {c["id"] for c in admin.client_list() if c.get("name") == "gateway" and c["db"] == db}


# --- one test per row of the table in docs/operations.md ---------------------------------------


def test_connection_refused(gateway: Gateway, fault_redis: RedisServer) -> None:
    assert_working(gateway)
    port = fault_redis.port
    fault_redis.stop()
    try:
        assert_refused(gateway)
    finally:
        fault_redis.port = port
        fault_redis.start()
    # A fresh server: the keys are gone, so seed again and check the same app reconnects.
    fresh = redis.Redis.from_url(fault_redis.url, decode_responses=True)
    gateway.headers = seed(gateway.app, fresh)
    fresh.close()
    heal_and_check(gateway)


def test_timeout_while_paused(gateway: Gateway, admin: redis.Redis) -> None:
    assert_working(gateway)
    # WRITE, not ALL: every route needs a write (the limiter's script, the readiness key), and
    # Redis 7.0 holds even CLIENT UNPAUSE until a pause of ALL lapses.
    admin.execute_command("CLIENT", "PAUSE", "20000", "WRITE")
    try:
        assert_refused(gateway)
    finally:
        admin.execute_command("CLIENT", "UNPAUSE")
    heal_and_check(gateway)


def test_out_of_memory_under_noeviction(gateway: Gateway, admin: redis.Redis) -> None:
    assert_working(gateway)
    admin.config_set("maxmemory-policy", "noeviction")
    admin.config_set("maxmemory", 1)  # bytes: every write is now refused with OOM
    try:
        with pytest.raises(redis.exceptions.OutOfMemoryError):
            admin.set("probe", "1")
        assert_refused(gateway)
    finally:
        admin.config_set("maxmemory", 0)
    heal_and_check(gateway)


def test_read_only_replica_drops_its_connections(fault_redis: RedisServer, admin: redis.Redis) -> None:
    # A database of its own, so that CLIENT LIST tells this app's connections from those of
    # the apps of earlier tests (their background flushers still run, on database 0).
    url = fault_redis.url.rsplit("/", 1)[0] + "/3"
    app = create_app({**fault_env(fault_redis), "REDIS_URL": url})
    store = redis.Redis.from_url(url, decode_responses=True)
    gateway = Gateway(app, app.test_client(), seed(app, store))
    store.close()
    assert_working(gateway)
    before = gateway_client_ids(admin, db="3")
    assert before
    admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))  # a primary that is not there
    try:
        assert_refused(gateway)
        # Every connection that met READONLY was closed rather than kept: after a failover the
        # next command connects afresh, to whatever the URL names as primary now.
        assert not before & gateway_client_ids(admin, db="3")
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
    heal_and_check(gateway)


def test_master_down_on_a_replica_without_stale_reads(gateway: Gateway, admin: redis.Redis) -> None:
    assert_working(gateway)
    admin.config_set("replica-serve-stale-data", "no")
    admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        with pytest.raises(redis.exceptions.MasterDownError):
            redis.Redis.from_url(gateway.app.config["REDIS_URL"]).get("probe")
        assert_refused(gateway)
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
        admin.config_set("replica-serve-stale-data", "yes")
    heal_and_check(gateway)


def test_busy_script_then_script_kill(gateway: Gateway, admin: redis.Redis, fault_redis: RedisServer) -> None:
    assert_working(gateway)
    admin.config_set("lua-time-limit", 50)  # ms before other clients are answered BUSY
    looper = redis.Redis.from_url(fault_redis.url)
    thread = threading.Thread(target=_run_forever_script, args=(looper,), daemon=True)
    thread.start()
    try:
        _wait_until_busy(admin)
        assert_refused(gateway)
    finally:
        _kill_script(admin)
        thread.join(5)
        looper.close()
    heal_and_check(gateway)


def _run_forever_script(client: redis.Redis) -> None:
    # It ends with "Script killed by user with SCRIPT KILL": the end of the fault.
    with contextlib.suppress(redis.ResponseError):
        client.eval("while true do end", 0)


def _wait_until_busy(admin: redis.Redis) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            admin.ping()
        except redis.ResponseError as exc:
            if str(exc).startswith("BUSY"):
                return
        time.sleep(0.02)
    raise AssertionError("the script never made Redis busy")


def _kill_script(admin: redis.Redis) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            admin.script_kill()
            return
        except redis.ResponseError as exc:  # NOTBUSY: the script is not running (yet, or any more)
            if "NOTBUSY" in str(exc):
                return
        time.sleep(0.02)


def test_loading_a_dataset_after_a_restart(
    gateway: Gateway, admin: redis.Redis, fault_redis: RedisServer
) -> None:
    assert_working(gateway)
    # Enough keys, each loaded slowly (key-load-delay, in microseconds), for a ~2 s LOADING window.
    pipe = admin.pipeline(transaction=False)
    for i in range(2000):
        pipe.set(f"filler:{i}", "x" * 64)
    pipe.execute()
    admin.save()
    port = fault_redis.port
    fault_redis.stop()
    fault_redis.port = port
    fault_redis.process = subprocess.Popen(
        [
            *fault_redis.command(),
            "--key-load-delay",
            "1000",
            "--loading-process-events-interval-bytes",
            "1024",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_until_loading(fault_redis)
        assert_refused(gateway)
    finally:
        fault_redis.wait_ready(30)
    heal_and_check(gateway)  # the key and the user were in the snapshot: same credentials work
    admin.connection_pool.disconnect()


def _wait_until_loading(server: RedisServer) -> None:
    # No retries: redis-py's default ones would wait through LOADING and hide it.
    probe = redis.Redis(
        port=server.port, socket_timeout=0.5, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    deadline = time.monotonic() + 5
    try:
        while time.monotonic() < deadline:
            try:
                probe.ping()
            except redis.BusyLoadingError:
                return
            except redis.ConnectionError:
                pass  # not listening yet
            time.sleep(0.01)
        raise AssertionError("the server never answered LOADING")
    finally:
        probe.close()


def test_script_flush_heals_without_an_error(gateway: Gateway, admin: redis.Redis) -> None:
    assert_working(gateway)
    admin.script_flush()  # as after a failover to a replica that never ran the scripts
    assert_working(gateway)  # no 503: the scripts are loaded again on the spot
    assert ask(gateway, "POST /events")[0] == 201


# --- the same, through real gunicorn ------------------------------------------------------------


@pytest.mark.gunicorn
def test_gunicorn_read_only_then_script_flush(
    fault_redis: RedisServer,
    admin: redis.Redis,
    gunicorn: Callable[..., GunicornServer],
    tmp_path: Path,
) -> None:
    env = fault_env(fault_redis)
    headers = seed(create_app(env), admin)
    server = gunicorn(workers=2, env=env)
    post = lambda: requests.post(  # noqa: E731 - a one-line request used many times
        server.url + "/events", json={"event_type": "fault"}, headers=headers, timeout=10
    )
    assert all(post().status_code == 201 for _ in range(6))  # both workers have loaded their scripts

    admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        for _ in range(6):
            answer = post()
            assert answer.status_code == 503, answer.text
            assert answer.json()["status_code"] == 503 and answer.json()["path"] == "/events"
        assert requests.get(server.url + "/readyz", timeout=10).status_code == 503
        assert requests.get(server.url + "/healthz", timeout=10).text == "ok"
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
    deadline = time.monotonic() + HEAL_WITHIN
    while requests.get(server.url + "/readyz", timeout=10).status_code != 200:
        assert time.monotonic() < deadline, "gunicorn did not heal after Redis did"
        time.sleep(0.1)
    assert all(post().status_code == 201 for _ in range(6))

    admin.script_flush()  # every worker's EVALSHA now meets NOSCRIPT once
    assert all(post().status_code == 201 for _ in range(6))


# --- classification: what is a passing outage (503) and what is a bug (500) --------------------

UNAVAILABLE = [
    redis.ConnectionError("Connection refused"),
    redis.TimeoutError("Timeout reading from socket"),
    redis.BusyLoadingError("Redis is loading the dataset in memory"),
    redis.exceptions.OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
    redis.ReadOnlyError("You can't write against a read only replica."),
    redis.exceptions.MasterDownError("Link with MASTER is down"),
    RedisRefusedError("BUSY Redis is busy running a script."),
    # As a client not built by core.redis raises them (a bare ResponseError):
    redis.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL"),
    redis.ResponseError("MISCONF Redis is configured to save RDB snapshots, but it's unable to"),
    redis.ResponseError("NOREPLICAS Not enough good replicas to write."),
    redis.ResponseError("NOSCRIPT No matching script. Please use EVAL."),
    redis.ResponseError("Command # 2 (EVALSHA abc 1 k) of pipeline caused error: BUSY Redis is busy"),
]
BUGS = [
    redis.ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"),
    redis.ResponseError("ERR wrong number of arguments for 'set' command"),
    redis.ResponseError("ERR Error running script (call to f_0123): user_script:1: Script attempted"),
    redis.DataError("Invalid input of type: 'dict'."),
    ValueError("BUSY"),
]


@pytest.mark.parametrize("exc", UNAVAILABLE, ids=lambda e: f"{type(e).__name__}:{str(e)[:12]}")
def test_unavailable_classes_and_codes(exc: Exception) -> None:
    assert is_unavailable(exc)


@pytest.mark.parametrize("exc", BUGS, ids=lambda e: f"{type(e).__name__}:{str(e)[:12]}")
def test_programming_errors_are_not_outages(exc: Exception) -> None:
    assert not is_unavailable(exc)


def test_log_label_never_carries_the_message() -> None:
    exc = redis.ResponseError("Command # 1 (SET gw:secret rgw_value) of pipeline caused error: BUSY x")
    assert failure_label(exc) == "ResponseError BUSY"
    assert failure_label(redis.ReadOnlyError("You can't write")) == "ReadOnlyError"


@pytest.fixture
def probed(fault_redis: RedisServer, admin: redis.Redis) -> FlaskClient:
    """An app with two routes that meet Redis errors the gateway's connections did not classify."""
    app = create_app(fault_env(fault_redis))

    @app.get("/_probe/busy")
    @public
    def probe_busy() -> str:
        """As a client of its own would see a busy script: a bare ResponseError."""
        raise redis.ResponseError("BUSY Redis is busy running a script. You can only call SCRIPT KILL")

    @app.get("/_probe/wrongtype")
    @public
    def probe_wrongtype() -> str:
        """A genuine bug: a list command on a string key."""
        get_redis().set("probe:string", "v")
        get_redis().lpush("probe:string", "x")
        return "unreachable"

    return app.test_client()


def test_bare_busy_reply_answers_503(probed: FlaskClient) -> None:
    answer = probed.get("/_probe/busy")
    assert answer.status_code == 503
    assert answer.get_json()["status_code"] == 503 and answer.headers["Retry-After"] == "1"


def test_a_redis_programming_error_stays_a_logged_500(
    probed: FlaskClient, caplog: pytest.LogCaptureFixture
) -> None:
    answer = probed.get("/_probe/wrongtype")
    assert answer.status_code == 500  # not silently turned into a passing outage
    body = answer.get_json()
    assert body["status_code"] == 500 and "WRONGTYPE" not in answer.get_data(as_text=True)
    logged = [r for r in caplog.records if r.exc_info and isinstance(r.exc_info[1], redis.ResponseError)]
    assert logged and "WRONGTYPE" in str(logged[0].exc_info[1])


@pytest.mark.parametrize(
    ("fault", "reads"),
    # A replica refuses every script without Redis 7's no-writes flag, the key look-up too;
    # a full Redis still runs it (only its write commands are refused).
    [("oom", 200), ("readonly", 503)],
)
def test_failing_open_keeps_login_closed(
    fault_redis: RedisServer, admin: redis.Redis, fault: str, reads: int
) -> None:
    """RATELIMIT_FAIL_OPEN=true: the limiter falls back, so reads Redis still serves answer
    200; writes, login and readiness stay 503."""
    app = create_app({**fault_env(fault_redis), "RATELIMIT_FAIL_OPEN": "true"})
    gw = Gateway(app, app.test_client(), seed(app, admin))
    assert_working(gw)
    if fault == "oom":
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)
    else:
        admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        answers = {route: ask(gw, route)[0] for route in WORKING}
    finally:
        end_every_fault(admin)
    assert answers == {"POST /events": 503, "GET /events": reads, "POST /auth/login": 503, "GET /readyz": 503}
    heal_and_check(gw)


def test_a_connection_held_aside_reconnects_after_another_met_readonly(
    fault_redis: RedisServer, admin: redis.Redis
) -> None:
    """Like the rate limiter's kept connections: checked out, so no pool-wide close reaches
    them; they reconnect before their next command instead of staying on the old primary."""
    client = create_redis(fault_redis.url)
    held = client.connection_pool.get_connection()
    held.send_command("CLIENT", "ID")
    held_id = held.read_response()
    admin.execute_command("REPLICAOF", "127.0.0.1", str(free_port()))
    try:
        with pytest.raises(redis.ReadOnlyError):
            client.set("k", "v")  # on another connection of the same pool
    finally:
        admin.execute_command("REPLICAOF", "NO", "ONE")
    held.send_command("CLIENT", "ID")
    assert held.read_response() != held_id  # a fresh socket, not the one from before
    assert client.set("k", "v")
    client.connection_pool.release(held)
    client.close()
