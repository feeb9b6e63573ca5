"""Every Lua script of the gateway, recorded as it runs: which KEYS each call passed, so a
test can assert that they all map to one Redis Cluster slot, and a walk through the app
that runs each script at least once (on a standalone server or on a cluster)."""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from flask import Flask
from flask.testing import FlaskClient
from redis.cluster import key_slot

from auth import keys, users
from auth.scopes import ALL_SCOPES
from core.redis import LuaScript

Call = tuple[str, list[str]]  # (script source, KEYS)

# Modules holding LuaScript objects or script sources the app runs.
SCRIPT_MODULES = (
    "auth.keys",
    "auth.users",
    "auth.sessions",
    "core.idempotency",
    "gateway.agents.service",
    "gateway.agents.streaming",
    "gateway.events.service",
    "gateway.jobs.guard",
    "gateway.jobs.limits",
)


def known_sources() -> set[str]:
    """The source of every script: the modules' LuaScript objects and the rate limiter's."""
    from gateway.ratelimit import admission, decision, leases

    found = {decision.DECIDE_LUA, admission.ADMIT_LUA, admission.UNKNOWN_LUA, leases.RETURN_LUA}
    for name in SCRIPT_MODULES:
        module = importlib.import_module(name)
        found |= {v.source for v in vars(module).values() if isinstance(v, LuaScript)}
    return found


def standalone_only() -> set[str]:
    """Scripts that name a key themselves (the record behind a digest's look-up): they run
    only on one server, never on a cluster (auth.keys.lookup_digest, admission._unknown_reply)."""
    from gateway.ratelimit import admission

    return {keys._LOOKUP_SCRIPT.source, admission.UNKNOWN_LUA}


def cluster_only() -> set[str]:
    """The record check of a cluster's two-call look-up (one server runs lookup_key instead)."""
    return {keys._CHECK_SCRIPT.source}


def jobs_only() -> set[str]:
    """Scripts that read RQ's hashes by name: the jobs' Redis is never a cluster (JOBS_REDIS_URL)."""
    from gateway.jobs import guard, limits

    return {guard._CANCEL.source, limits._TAKE_PLACE.source}


def split_on_a_cluster(call: Call) -> bool:
    """A decision or give-back on counters alone: one call on one server, split per slot group
    on a cluster (gateway.ratelimit.decision.slot_groups; the cluster tests check that)."""
    from gateway.ratelimit import decision, leases

    source, keys_ = call
    return source in (decision.DECIDE_LUA, leases.RETURN_LUA) and all(
        k.startswith("gw:ratelimit:") for k in keys_
    )


def slot_violations(calls: list[Call]) -> list[Call]:
    """The calls whose KEYS do not all map to one cluster slot."""
    return [(src, ks) for src, ks in calls if len({key_slot(k.encode()) for k in ks}) > 1]


# A key made in Lua from strings: redis.call('CMD', <first argument with "..">).
_BUILT_KEY = re.compile(r"redis\.p?call\('\w+',\s*[^,)]*\.\.")


def builds_keys(source: str) -> bool:
    """True when a script passes redis.call a key it built by concatenation (a heuristic)."""
    return bool(_BUILT_KEY.search(source))


@contextmanager
def recording(monkeypatch: Any) -> Iterator[list[Call]]:
    """Record every LuaScript call (the rate limiter's too, with GATEWAY_FASTPATH off)."""
    calls: list[Call] = []
    original = LuaScript.__call__

    def record(self: LuaScript, r: Any, keys_: list[Any], args: list[Any]) -> Any:
        calls.append((self.source, [str(k) for k in keys_]))
        return original(self, r, keys_, args)

    monkeypatch.setattr(LuaScript, "__call__", record)
    yield calls


def exercise(app: Flask, client: FlaskClient, r: Any, pepper: bytes) -> None:
    """Run every script of the app at least once: keys, users, sessions, limits, events,
    agents, streams, idempotency (jobs' scripts too, on a client that can run them)."""
    _keys_and_limits(client, r, pepper)
    _users_and_sessions(client, r)
    _agents_and_streams(app, client, r, pepper)


def _bearer(r: Any, pepper: bytes, **fields: Any) -> tuple[dict[str, Any], dict[str, str]]:
    record, secret = keys.create_key(r, pepper=pepper, name="slots", scopes=list(ALL_SCOPES), **fields)
    return record, {"Authorization": f"Bearer {secret}"}


def _keys_and_limits(client: FlaskClient, r: Any, pepper: bytes) -> None:
    record, headers = _bearer(r, pepper)
    assert client.get("/events", headers=headers).status_code == 200  # unknown, then known
    assert client.get("/events", headers=headers).status_code == 200
    wrong = {"Authorization": "Bearer " + keys.generate_secret()}
    assert client.get("/events", headers=wrong).status_code == 401
    idem = {**headers, "Idempotency-Key": uuid.uuid4().hex}
    assert client.post("/events", json={"event_type": "slots"}, headers=idem).status_code == 201
    assert client.post("/events", json={"event_type": "slots"}, headers=idem).status_code == 201
    assert client.post("/admin/keys", json={"name": "k2", "scopes": []}, headers=idem).status_code in (
        200,
        201,
    )
    assert keys.lookup_digest(r, keys.digest(keys.generate_secret(), pepper)) is None
    keys.rotate_key(r, record["id"], pepper=pepper, grace_seconds=60)
    keys.revoke_key(r, record["id"])
    assert client.get("/events", headers=headers).status_code == 401
    _, writer = _bearer(r, pepper)
    # A non-admin key: events are paged by owner
    _, reader = _bearer_scoped(r, pepper, ["events:read", "events:write"])
    assert client.get("/events", headers=reader).status_code == 200
    assert writer


def _bearer_scoped(r: Any, pepper: bytes, scopes: list[str]) -> tuple[dict[str, Any], dict[str, str]]:
    record, secret = keys.create_key(r, pepper=pepper, name="scoped", scopes=scopes)
    return record, {"Authorization": f"Bearer {secret}"}


def _users_and_sessions(client: FlaskClient, r: Any) -> None:
    email, password = f"{uuid.uuid4().hex[:8]}@example.com", "correct horse battery staple 9"
    first = users.create_user(r, email=email, password=password)
    other = users.create_user(r, email="b" + email, password=password)
    site: dict[str, Any] = {"headers": {"Origin": "https://localhost"}, "base_url": "https://localhost"}
    wrong = {"email": email, "password": "wrong" * 4}
    assert client.post("/auth/login", json=wrong, **site).status_code == 401
    assert client.post("/auth/login", json={"email": email, "password": password}, **site).status_code == 200
    assert client.get("/auth/me", **site).status_code == 200  # a Secure cookie: the session's load script
    app_ = client.application
    app_.session_interface._fetch(app_, r, "x" * 43)  # type: ignore[attr-defined]  # the load script, directly too
    _idempotency_dropped(r)
    users.disable_user(r, other["id"])
    users.enable_user(r, other["id"])
    assert first


def _idempotency_dropped(r: Any) -> None:
    from core import idempotency

    def fail() -> idempotency.Answer:
        raise RuntimeError("planted")

    try:
        idempotency.run_once(r, scope="slots", owner="cli", idempotency_key="k", request="{}", create=fail)
    except RuntimeError:
        return  # the pending claim was dropped
    raise AssertionError("create() was not called")


def _agents_and_streams(app: Flask, client: FlaskClient, r: Any, pepper: bytes) -> None:
    from gateway.agents.streaming import ReplyClaim, StreamSettings, StreamSlot

    record, headers = _bearer(r, pepper)
    session = client.post("/agents/session", headers=headers).get_json()["session_id"]
    sent = client.post(
        "/agents/message", json={"session_id": session, "role": "user", "content": "hi"}, headers=headers
    )
    assert sent.status_code in (200, 201, 202), sent.get_json()
    owner = f"api_key:{record['id']}"
    settings = StreamSettings.from_config(app.config)
    slot = StreamSlot.acquire(r, owner=owner, connection_id="c1", settings=settings)
    slot.renew()
    slot.release()
    claim = ReplyClaim(r, session, "m1")
    assert claim.take("st1") is None
    assert claim.renew("st1") and claim.keep("st1", 5)
    claim.release("st1")


def exercise_jobs(r: Any) -> None:
    """The jobs' scripts, on the jobs' Redis (never a cluster)."""
    from gateway.jobs import guard, limits

    job = uuid.uuid4().hex
    limits.take_place(r, owner="api_key:k", job_id=job, limit=10)
    assert guard.claim_start(r, job, ttl=5)
    guard.release_start(r, job)
    guard.cancel(r, job)


Check = Callable[[list[Call]], list[Call]]
