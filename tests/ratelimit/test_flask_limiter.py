"""Flask-Limiter is the face: ``@limiter.limit`` routes (login, stream opens, RATELIMIT_ROUTES,
any view decorated at run time) and ``@limiter.exempt`` health probes, all decided by the
gateway's one atomic call, so a refused request takes nothing from any limit."""

from __future__ import annotations

from collections.abc import Callable

import flask_limiter
import pytest
import redis
from flask import Flask, Response, jsonify
from flask_limiter import ExemptionScope

from auth import keys, public
from auth.loaders import pepper
from config import ConfigError
from gateway import create_app
from gateway.ratelimit import counter_key, limiter


def bearer(secret: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {secret}"}


def key_id(r: redis.Redis, app: Flask, secret: str) -> str:
    record = keys.lookup(r, secret, pepper(app))
    assert record is not None
    return str(record["id"])


def counter(r: redis.Redis, name: str) -> int:
    return int(r.get(name) or 0)


def evalsha_calls(r: redis.Redis) -> int:
    return int(r.info("commandstats").get("cmdstat_evalsha", {}).get("calls", 0))


def test_the_extension_is_flask_limiters(app: Flask) -> None:
    assert isinstance(limiter, flask_limiter.Limiter)
    assert limiter in app.extensions["limiter"]
    assert type(limiter.limiter).__name__ == "GatewayStrategy"  # its strategy is the gateway's decision


def test_a_route_limit_refuses_at_its_limit_and_leaves_other_routes_alone(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    app = make_app(RATELIMIT_ROUTES="auth.me=2/minute")
    client, secret = app.test_client(), make_key(rate_limit="50/minute")
    answers = [client.get("/auth/me", headers=bearer(secret)) for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    refused = answers[2]
    assert refused.get_json()["retry_after"] == int(refused.headers["Retry-After"])
    assert '"route";q=2;w=60' in refused.headers["RateLimit-Policy"]
    assert refused.headers["X-RateLimit-Limit"] == "2" and refused.headers["X-RateLimit-Remaining"] == "0"
    assert client.get("/_probe/me", headers=bearer(secret)).status_code == 200  # another route
    assert make_app().test_client().get("/auth/me", headers=bearer(secret)).status_code == 200  # another app


def test_a_refused_request_takes_nothing_from_any_limit(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    app = make_app(RATELIMIT_ROUTES="auth.me=2/minute", RATELIMIT_LEASE_MAX="1")
    client, secret = app.test_client(), make_key(rate_limit="3/minute")
    subject = f"key:{key_id(r, app, secret)}"
    rate, route = counter_key(subject, "rate", 3, 60), counter_key(f"{subject}:auth.me", "route", 2, 60)
    assert [client.get("/auth/me", headers=bearer(secret)).status_code for _ in range(3)] == [200, 200, 429]
    assert (counter(r, rate), counter(r, route)) == (2, 2)  # the route refused: the rate kept its unit
    assert client.get("/_probe/me", headers=bearer(secret)).status_code == 200  # so the rate has one left
    assert client.get("/auth/me", headers=bearer(secret)).status_code == 429
    assert client.get("/_probe/me", headers=bearer(secret)).status_code == 429  # the rate refuses now
    assert (counter(r, rate), counter(r, route)) == (3, 2)


def test_an_unknown_route_in_ratelimit_routes_stops_start_up(test_env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as refused:
        create_app({**test_env, "RATELIMIT_ROUTES": "events.craete=10/minute"})
    message = str(refused.value)
    assert "RATELIMIT_ROUTES" in message and "events.craete" in message and "\n" not in message


def test_stream_opens_are_limited_per_identity(
    make_app: Callable[..., Flask], make_key: Callable[..., str]
) -> None:
    app = make_app(RATELIMIT_STREAM_OPENS="2/minute")
    client, secret, other = app.test_client(), make_key(), make_key()
    url = "/agents/stream?session_id=sess_nope"
    opens = [client.get(url, headers=bearer(secret)) for _ in range(3)]
    assert [a.status_code for a in opens] == [404, 404, 429]  # an open counts, whatever its answer
    assert '"stream-opens";q=2;w=60' in opens[2].headers["RateLimit-Policy"]
    assert "stream limit" in opens[2].get_json()["message"]
    assert client.get(url, headers=bearer(other)).status_code != 429  # another identity's own count
    assert client.get("/auth/me", headers=bearer(secret)).status_code == 200  # other routes unaffected


@pytest.mark.parametrize("path", ["/healthz", "/health", "/readyz"])
def test_health_probes_are_exempt_through_flask_limiter(make_app: Callable[..., Flask], path: str) -> None:
    app = make_app(RATELIMIT_ANONYMOUS="1/minute")
    answers = [app.test_client().get(path) for _ in range(5)]
    assert all(a.status_code == 200 for a in answers)
    assert all("X-RateLimit-Limit" not in a.headers for a in answers)
    endpoint = app.url_map.bind("localhost").match(path)[0]
    assert limiter.limit_manager.exemption_scope(app, endpoint, "health") & ExemptionScope.DEFAULT


def test_a_view_decorated_at_run_time_is_limited_by_the_gateways_one_call(
    make_app: Callable[..., Flask], make_key: Callable[..., str], r: redis.Redis
) -> None:
    app = make_app(RATELIMIT_LEASE_MAX="1")

    @app.get("/_probe/limited")
    @public
    @limiter.limit("2/minute")
    def probe_limited() -> Response:
        """A view with a limit of its own; reports what Flask-Limiter sees."""
        current = limiter.current_limit
        assert current is not None
        return jsonify({"remaining": current.remaining})

    client = app.test_client()
    client.get("/")  # the script is loaded
    before = evalsha_calls(r)
    answers = [client.get("/_probe/limited") for _ in range(3)]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert evalsha_calls(r) - before == 3  # one decision per request: the IP's and the route's together
    assert [a.get_json()["remaining"] for a in answers[:2]] == [1, 0]  # Flask-Limiter reads the decision
    assert answers[2].get_json()["retry_after"] >= 1
    assert '"anonymous"' in answers[2].headers["RateLimit-Policy"]
    # "/" twice and two granted probes: the refused one took nothing from the IP's limit.
    assert client.get("/").headers["X-RateLimit-Remaining"] == str(30 - 4)


def test_a_limit_inside_a_view_gets_its_own_atomic_call(make_app: Callable[..., Flask]) -> None:
    app = make_app()

    @app.get("/_probe/block")
    @public
    def probe_block() -> Response:
        """A block limited by a context-manager limit (not known to the hook)."""
        with limiter.limit("1/minute"):
            return jsonify({"ok": True})

    client = app.test_client()
    assert [client.get("/_probe/block").status_code for _ in range(2)] == [200, 429]
