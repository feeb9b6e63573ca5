"""The identity of a request: resolved once, decided by the key alone when one is presented."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import redis
from flask import Flask

import auth.loaders
from auth import keys, management
from auth.audit import Actor
from auth.identity import current_identity, loaded_identity
from auth.loaders import key_cache, pepper
from gateway.ratelimit import admission

ACTOR = Actor(owner="cli", name="test")


def test_the_identity_is_resolved_once_per_request(
    app: Flask, make_key: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def counting(original: Callable[..., object], name: str) -> Callable[..., object]:
        def count(secret: str, *args: object) -> object:
            calls.append(name)
            return original(secret, *args)

        return count

    # A guarded route's key is admitted with its limits (one call); elsewhere, resolved.
    monkeypatch.setattr(auth.loaders, "resolve_key", counting(auth.loaders.resolve_key, "resolve"))
    monkeypatch.setattr(admission, "admit", counting(admission.admit, "admit"))
    secret = make_key(scopes=["jobs:read"])
    # The limiter, the access guard, the view and the access line all ask.
    assert app.test_client().get("/jobs", headers={"X-API-Key": secret}).status_code == 200
    assert calls == ["admit"]
    calls.clear()
    assert app.test_client().get("/", headers={"X-API-Key": secret}).status_code == 200  # public
    assert calls == ["resolve"]


def test_a_key_decides_alone_whatever_cookies_come_with_it(app: Flask, make_key: Callable[..., str]) -> None:
    client = app.test_client()
    # Flask-Login's general path would try a remember-me cookie before the request loader.
    client.set_cookie("remember_token", "user:1|forged")
    client.set_cookie(app.config["SESSION_COOKIE_NAME"], "s" * 43)
    answer = client.get("/auth/me", headers={"X-API-Key": make_key(name="alone")})
    assert answer.status_code == 200 and answer.get_json()["name"] == "alone"
    assert "Set-Cookie" not in answer.headers


def test_loaded_identity_never_loads(app: Flask, make_key: Callable[..., str]) -> None:
    secret = make_key()
    with app.test_request_context("/auth/me", headers={"X-API-Key": secret}):
        assert loaded_identity() is None
        identity = current_identity()
        assert identity is not None and loaded_identity() is identity
    assert current_identity() is None and loaded_identity() is None  # no request: nobody


@pytest.mark.parametrize("change", ["revoke", "rotate"])
def test_revoking_or_rotating_forgets_the_key_in_the_given_cache(
    app: Flask, r: redis.Redis, make_key: Callable[..., str], change: str
) -> None:
    secret = make_key()
    with app.test_request_context("/"):
        identity = auth.loaders.resolve_key(secret)
        assert identity is not None
        cache = key_cache()
        key_digest = cache.digest(secret)
        assert cache.get(key_digest) == identity  # warm: would be served for up to the TTL
        if change == "revoke":
            management.revoke_key(r, actor=ACTOR, key_id=identity.id, cache=cache)
        else:
            management.rotate_key(r, pepper=pepper(), actor=ACTOR, key_id=identity.id, cache=cache)
        assert cache.get(key_digest) is None
        assert auth.loaders.resolve_key(secret) is None


def test_without_a_cache_the_change_is_still_made(r: redis.Redis) -> None:
    record, _ = keys.create_key(r, pepper=b"p" * 32, name="n", scopes=[])
    assert management.revoke_key(r, actor=ACTOR, key_id=record["id"], cache=None)["revoked_at"]


def test_a_key_request_is_decided_by_the_key_alone(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    """With a key, the session cookie is not read (no Redis call for it) and a wrong key stays anonymous."""

    def commands_for_two_key_requests(cookie: bool) -> int:
        client = make_app().test_client()
        secret = make_key()
        client.get("/_probe/me")  # the scripts are loaded on this server before anything is counted
        if cookie:  # shaped like a session id: reading it would cost a look-up
            client.set_cookie("gw_session", "A" * 43)
        r.config_resetstat()
        assert client.get("/_probe/me", headers={"X-API-Key": secret}).get_json()["type"] == "api_key"
        assert client.get("/_probe/me", headers={"X-API-Key": secret}).status_code == 200
        assert client.get("/_probe/me", headers={"X-API-Key": "rgw_" + "x" * 36}).status_code == 401
        stats = r.info("commandstats")
        return sum(int(v["calls"]) for k, v in stats.items() if k != "cmdstat_config|resetstat")

    without = commands_for_two_key_requests(cookie=False)
    assert without > 0  # the look-up and the limits did reach Redis: the count proves something
    assert commands_for_two_key_requests(cookie=True) == without  # and the cookie added nothing
