"""Exactness across gunicorn instances on any Redis topology (standalone, Sentinel, Cluster)."""

from __future__ import annotations

from collections.abc import Callable

from auth import keys
from auth.loaders import pepper
from core.redis import create_redis
from devtools.gunicorn import GunicornServer
from gateway import create_app
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
