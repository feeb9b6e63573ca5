"""`flask redis migrate-keys`: a store of the untagged layout of earlier releases is renamed to
the tagged one (core.redis.KEYS), the app finds its data again, and a second run moves nothing."""

from __future__ import annotations

import re
from collections.abc import Callable

import redis
from flask import Flask
from flask.testing import FlaskClient, FlaskCliRunner

from auth import audit, users
from core import keymigration
from core.redis import KEYS

PASSWORD = "a long enough password"

# The new names back to those of earlier releases, written out by hand (not from the rules
# under test): gw:<area>:{tag}:<what>... -> the old shapes.
_BY_ID = [
    (r"gw:keys:\{k:([^}]+)\}:record", r"gw:keys:record:\1"),
    (r"gw:keys:\{kd:([^}]+)\}:digest", r"gw:keys:digest:\1"),
    (r"gw:users:\{u:([^}]+)\}:record", r"gw:users:record:\1"),
    (r"gw:users:\{ue:([^}]+)\}:email", r"gw:users:email:\1"),
    (r"gw:sessions:\{ls:([^}]+)\}:record", r"gw:sessions:\1"),
    (r"gw:sessions:\{u:([^}]+)\}:user", r"gw:sessions:user:\1"),
    (r"gw:agents:\{s:([^}]+)\}:session", r"gw:agents:session:\1"),
    (r"gw:agents:\{s:([^}]+)\}:messages", r"gw:agents:messages:\1"),
    (r"gw:agents:\{[^}]+\}:sessions:(.+)", r"gw:agents:owner:\1"),
    (r"gw:idempotency:\{i:([^}]+)\}", r"gw:idempotency:\1"),
    (
        r"gw:(keys|users|events|audit|metrics|agents|jobs):\{(keys|users|ev|audit|metrics|agents|jobs)\}:(.+)",
        r"gw:\1:\3",
    ),
]


def _old_name(new: str) -> str | None:
    for pattern, old in _BY_ID:
        if re.fullmatch(pattern, new):
            return re.sub(pattern, old, new)
    return None


def to_old_layout(r: redis.Redis) -> int:
    """Rename the store as an earlier release had it (rate-limit counters simply dropped)."""
    renamed = 0
    for name in list(r.scan_iter("gw:*")):
        if name.startswith("gw:ratelimit:") or name.startswith("gw:health:"):
            r.delete(name)
            continue
        old = _old_name(name)
        assert old is not None, f"no old name for {name}"
        r.rename(name, old)
        renamed += 1
    assert not [n for n in r.scan_iter("gw:*") if "{" in n]
    return renamed


def _store(r: redis.Redis) -> dict[str, bytes | None]:
    return {name: r.dump(name) for name in r.scan_iter("gw:*") if not name.startswith("gw:ratelimit:")}


def test_migrate_keys_moves_an_old_store_and_is_idempotent(
    app: Flask,
    client: FlaskClient,
    runner: FlaskCliRunner,
    r: redis.Redis,
    auth_headers: Callable[..., dict[str, str]],
) -> None:
    headers = auth_headers()
    user = users.create_user(r, email="ops@example.com", password=PASSWORD)
    audit.record(r, audit.Actor(owner="cli", name="test"), "key.create", key_id="key_x")
    idem = {**headers, "Idempotency-Key": "once"}
    posted = client.post("/events", json={"event_type": "order.created"}, headers=idem)
    assert posted.status_code == 201
    session = client.post("/agents/session", headers=headers).get_json()["session_id"]

    assert to_old_layout(r) >= 10
    assert client.get("/events", headers=headers).status_code == 401  # the old names are not read

    result = runner.invoke(args=["redis", "migrate-keys"])
    assert result.exit_code == 0, result.output
    assert re.search(r"moved (\d+) keys", result.output)
    assert int(re.search(r"moved (\d+) keys", result.output).group(1)) >= 10  # type: ignore[union-attr]

    assert (
        client.get("/events", headers=headers).get_json()["events"][0]["event_id"]
        == posted.get_json()["event_id"]
    )
    replay = client.post("/events", json={"event_type": "order.created"}, headers=idem)
    assert replay.get_json()["event_id"] == posted.get_json()["event_id"]  # the Idempotency-Key moved too
    assert users.get_user_by_email(r, "ops@example.com")["id"] == user["id"]
    assert audit.recent(r)[0]["action"] == "key.create"
    assert client.get(f"/agents/session/{session}/messages", headers=headers).status_code == 200

    before = _store(r)
    again = runner.invoke(args=["redis", "migrate-keys"])
    assert again.exit_code == 0 and "moved 0 keys" in again.output
    assert _store(r) == before


def test_an_existing_new_name_is_never_overwritten(r: redis.Redis) -> None:
    r.set("gw:keys:digest:abc", "key_old")
    r.set(KEYS.key_digest("abc"), "key_new")
    report = keymigration.migrate_keys(r)
    assert report.moved == 0 and report.conflicts == ["gw:keys:digest:abc"]
    assert r.get(KEYS.key_digest("abc")) == "key_new"


def test_rate_limit_counters_and_tagged_names_are_left_alone() -> None:
    assert keymigration.new_name("gw:ratelimit:fw:ip:1.2.3.4:anonymous:60:60") is None
    assert keymigration.new_name(KEYS.key_record("key_1")) is None
    assert keymigration.new_name("gw:keys:record:key_1") == KEYS.key_record("key_1")
    assert keymigration.new_name("gw:agents:stream:st1:frames") == KEYS.agent_stream_frames("st1")
    assert keymigration.new_name("gw:jobs:claimed:j1") == KEYS.job_mark("rq:job:j1", "claimed")
