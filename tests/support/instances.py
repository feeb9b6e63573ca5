"""Behaviour checked on every Redis topology (standalone, Sentinel, Cluster): exactness across
gunicorn instances, streams and their resume, admin sessions."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Flask

from auth import keys, users
from auth.loaders import pepper
from core.extensions import EXTENSION_KEY as REDIS_EXTENSION
from core.redis import create_redis
from devtools.gunicorn import GunicornServer
from gateway import create_app
from tests.agents.sse_client import Event, parse
from tests.auth.conftest import EMAIL, ORIGIN, PASSWORD
from tests.ratelimit.test_exactness import LIMIT, REQUESTS, hammer


def exact_on(
    url: str, extra: dict[str, str], gunicorn: Callable[..., GunicornServer], test_env: dict[str, str]
) -> None:
    """For a key limited to LIMIT, exactly LIMIT of REQUESTS succeed across 2 x 2 workers on ``url``."""
    env = {**test_env, "REDIS_URL": url, **extra}
    pepper_of_env = pepper(create_app(env))  # the instances' pepper: the same settings
    record, secret = keys.create_key(
        create_redis(url),
        pepper=pepper_of_env,
        name="x",
        scopes=["events:read"],
        rate_limit=f"{LIMIT}/minute",
    )
    first, second = gunicorn(workers=2, env=env), gunicorn(workers=2, env=env)
    urls = [first.url + "/auth/me", second.url + "/auth/me"]
    statuses = hammer(urls, {"Authorization": f"Bearer {secret}"})
    assert statuses == {200: LIMIT, 429: REQUESTS - LIMIT}, (record["id"], statuses)


def stream_and_resume(client: Any, headers: dict[str, str]) -> None:
    """A reply streamed whole, resumed from its middle (the frames after it, replayed from
    Redis), and from its last frame (204: nothing left)."""
    session = client.post("/agents/session", headers=headers).get_json()["session_id"]
    message = {"session_id": session, "role": "user", "content": "What is the weather like?"}
    assert client.post("/agents/message", json=message, headers=headers).status_code == 200
    first = _events(client, headers, session)
    assert first[-1].json["type"] == "done" and len(first) > 2
    middle = len(first) // 2
    resumed = _events(client, headers, session, first[middle].id)
    assert [(e.id, e.data) for e in resumed] == [(e.id, e.data) for e in first[middle + 1 :]]
    url = f"/agents/stream?session_id={session}"
    assert client.get(url, headers={**headers, "Last-Event-ID": first[-1].id}).status_code == 204


def _events(client: Any, headers: dict[str, str], session: str, after: str | None = None) -> list[Event]:
    extra = {"Last-Event-ID": after} if after else {}
    response = client.get(
        f"/agents/stream?session_id={session}", headers={**headers, **extra}, buffered=False
    )
    assert response.status_code == 200
    events, _ = parse(response.get_data(as_text=True))
    response.close()
    return events


def session_login_logout(app: Flask) -> None:
    """An admin logs in (a server-side session in Redis), is known by the cookie, logs out."""
    users.create_user(app.extensions[REDIS_EXTENSION], email=EMAIL, password=PASSWORD)
    client = app.test_client()
    origin = {"Origin": ORIGIN}
    login = client.post("/auth/login", json={"email": EMAIL, "password": PASSWORD}, headers=origin)
    assert login.status_code == 200
    assert client.get("/auth/me").get_json()["type"] == "user"
    assert client.post("/auth/logout", headers=origin).status_code == 200
    assert client.get("/auth/me").status_code == 401
