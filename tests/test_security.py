"""Security headers on every answer, https redirect, CORS, body limits, methods, request ids, logs."""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Callable

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from auth import keys

JSON_CSP = "default-src 'none'; frame-ancestors 'none'"
ORIGIN = "https://console.example.com"


def assert_armoured(answer: TestResponse, csp: str | None = JSON_CSP) -> None:
    headers = answer.headers
    hsts = re.fullmatch(r"max-age=(\d+); includeSubDomains", headers["Strict-Transport-Security"])
    assert hsts and int(hsts.group(1)) >= 365 * 24 * 3600
    assert headers["X-Content-Type-Options"] == "nosniff"
    assert headers["Referrer-Policy"] == "no-referrer"
    assert headers["Cache-Control"] == "no-store"
    assert headers["X-Request-ID"]
    if csp:
        assert headers["Content-Security-Policy"] == csp


@pytest.fixture
def client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(RATELIMIT_ANONYMOUS="1000/minute", MAX_CONTENT_LENGTH="1024").test_client()


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/", 200),
        ("GET", "/healthz", 200),
        ("GET", "/_probe/me", 401),
        ("GET", "/nowhere", 404),
        ("DELETE", "/", 405),
        ("TRACE", "/", 405),
        ("BREW", "/", 405),
        ("CONNECT", "/", 405),
        ("GET", "/_probe/crash", 500),
        ("GET", "/_probe/stream", 200),
    ],
)
def test_headers_on_every_kind_of_answer(client: FlaskClient, method: str, path: str, status: int) -> None:
    answer = client.open(path, method=method)
    assert answer.status_code == status
    assert_armoured(answer)
    if status >= 400:
        body = answer.get_json()
        assert body["status_code"] == status and body["path"] == path


def test_headers_on_413_and_429(make_app: Callable[..., Flask]) -> None:
    client = make_app(RATELIMIT_ANONYMOUS="1/minute", MAX_CONTENT_LENGTH="1024").test_client()
    too_big = client.post("/_probe/json", data=b"x" * 2048, content_type="application/json")
    assert too_big.status_code == 413
    assert too_big.get_json()["status_code"] == 413
    assert_armoured(too_big)
    assert client.get("/").status_code == 200
    limited = client.get("/")
    assert limited.status_code == 429
    assert_armoured(limited)


def test_html_pages_get_a_nonce_policy(client: FlaskClient) -> None:
    answer = client.get("/_probe/page")
    csp = answer.headers["Content-Security-Policy"]
    nonce = re.search(r"script-src 'self' 'nonce-([^']+)'", csp)
    assert nonce and f"style-src 'self' 'nonce-{nonce.group(1)}'" in csp
    assert "frame-ancestors 'none'" in csp and "default-src 'self'" in csp
    assert_armoured(answer, csp=None)
    again = client.get("/_probe/page").headers["Content-Security-Policy"]
    assert again != csp  # a fresh nonce per answer


def test_json_body_rules(client: FlaskClient) -> None:
    assert client.post("/_probe/json", json={"name": "a"}).get_json() == {"name": "a"}
    wrong_type = client.post("/_probe/json", data="name=a", content_type="application/x-www-form-urlencoded")
    assert wrong_type.status_code == 415
    assert client.post("/_probe/json").status_code == 400
    at_limit = client.post(
        "/_probe/json", data=json.dumps({"name": "a" * 1000}), content_type="application/json"
    )
    assert at_limit.status_code == 200


def production_app(make_app: Callable[..., Flask], **env: str) -> Flask:
    return make_app(FLASK_ENV="production", SECRET_KEY=secrets.token_urlsafe(48), **env)


def test_https_redirect_with_health_exempt(make_app: Callable[..., Flask]) -> None:
    client = production_app(make_app, RENDER="true").test_client()  # FORCE_HTTPS; Render: one trusted proxy
    answer = client.post("/_probe/json?x=1", json={"name": "a"})
    assert answer.status_code == 308  # keeps the method and body
    assert answer.headers["Location"] == "https://localhost/_probe/json?x=1"
    assert_armoured(answer)
    for probe in ("/healthz", "/health", "/readyz"):
        assert client.get(probe).status_code == 200
    through_proxy = client.get("/", headers={"X-Forwarded-Proto": "https", "X-Forwarded-For": "203.0.113.5"})
    assert through_proxy.status_code == 200
    assert client.get("/", base_url="https://localhost").status_code == 200


def test_forwarded_proto_is_not_believed_without_a_trusted_proxy(make_app: Callable[..., Flask]) -> None:
    client = production_app(make_app, TRUSTED_PROXY_COUNT="0").test_client()
    assert client.get("/", headers={"X-Forwarded-Proto": "https"}).status_code == 308
    off_render = production_app(make_app).test_client()  # the default off Render: no proxy believed
    assert off_render.get("/", headers={"X-Forwarded-Proto": "https"}).status_code == 308


def test_the_redirect_never_points_at_a_forwarded_foreign_host(make_app: Callable[..., Flask]) -> None:
    """Behind the trusted proxy, X-Forwarded-Host is the Host: it meets ALLOWED_HOSTS like one."""
    client = production_app(make_app, RENDER="true", ALLOWED_HOSTS="api.example.com").test_client()
    forged = client.get(
        "/docs", base_url="http://api.example.com", headers={"X-Forwarded-Host": "evil.example"}
    )
    assert forged.status_code == 400 and "Location" not in forged.headers
    assert forged.get_json()["status_code"] == 400
    assert_armoured(forged)
    fine = client.get("/docs", base_url="http://api.example.com")
    assert fine.headers["Location"] == "https://api.example.com/docs"


def test_cors_allow_list(make_app: Callable[..., Flask]) -> None:
    client = make_app(CORS_ORIGINS=ORIGIN, RATELIMIT_ANONYMOUS="3/minute").test_client()
    allowed = client.get("/", headers={"Origin": ORIGIN})
    assert allowed.headers["Access-Control-Allow-Origin"] == ORIGIN
    assert "X-RateLimit-Remaining" in allowed.headers["Access-Control-Expose-Headers"]
    refused = client.get("/", headers={"Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in refused.headers
    # Error answers carry CORS headers too, or browsers hide them from the page.
    unauthorized = client.get("/_probe/me", headers={"Origin": ORIGIN})
    assert unauthorized.status_code == 401
    assert unauthorized.headers["Access-Control-Allow-Origin"] == ORIGIN
    limited = client.get("/", headers={"Origin": ORIGIN})
    assert limited.status_code == 429
    assert limited.headers["Access-Control-Allow-Origin"] == ORIGIN


def test_cors_preflight_needs_no_credentials_or_quota(make_app: Callable[..., Flask]) -> None:
    client = make_app(CORS_ORIGINS=ORIGIN, RATELIMIT_ANONYMOUS="1/minute").test_client()
    preflight = {
        "Origin": ORIGIN,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "Authorization",
    }
    for _ in range(3):  # more than the anonymous limit: preflights take nothing from it
        answer = client.options("/_probe/me", headers=preflight)
        assert answer.status_code == 200
        assert answer.headers["Access-Control-Allow-Origin"] == ORIGIN
        assert "authorization" in answer.headers["Access-Control-Allow-Headers"].lower()
        assert "X-RateLimit-Limit" not in answer.headers
    refused = client.options("/_probe/me", headers={**preflight, "Origin": "https://evil.example.com"})
    assert "Access-Control-Allow-Origin" not in refused.headers


def test_no_cors_without_an_allow_list(client: FlaskClient) -> None:
    assert "Access-Control-Allow-Origin" not in client.get("/", headers={"Origin": ORIGIN}).headers


def test_request_id_accepted_validated_and_returned(client: FlaskClient) -> None:
    assert (
        client.get("/", headers={"X-Request-ID": "abc-123.DEF_4.5"}).headers["X-Request-ID"]
        == "abc-123.DEF_4.5"
    )
    for bad in ("has space", "x" * 129, "<script>", "a\tb", "abc:5"):
        returned = client.get("/", headers={"X-Request-ID": bad}).headers["X-Request-ID"]
        assert returned != bad and re.fullmatch(r"[0-9a-f]{32}", returned)


def test_logs_are_json_and_never_hold_credentials(
    client: FlaskClient, make_key: Callable[..., str], capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    secret = make_key()
    guessed = keys.generate_secret()
    client.get("/_probe/me", headers={"Authorization": f"Bearer {secret}", "X-Request-ID": "trace-me-1"})
    client.get("/_probe/me", headers={"X-API-Key": guessed, "Cookie": "gw_session=cookie-value-xyz"})
    client.get(f"/?api_key={guessed}")
    client.get("/_probe/crash")
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    access = [line for line in lines if line["logger"] == "gateway.access"]
    assert len(access) == 4
    assert access[0]["request_id"] == "trace-me-1" and access[0]["status"] == 200
    assert access[0]["identity"].startswith("api_key:key_")
    assert access[2]["path"] == "/"  # no query string
    assert any(line["level"] == "ERROR" and "exc_info" in line for line in lines)  # the crash, logged
    for needle in (secret, guessed, "cookie-value-xyz", "rgw_notakeybutlookslikeone", "Bearer"):
        assert needle not in err


@pytest.mark.parametrize("path", ["/_probe/me", "/", "/nowhere", "/_probe/page", "/_probe/stream"])
def test_each_security_header_is_sent_exactly_once(make_app: Callable[..., Flask], path: str) -> None:
    answer = make_app().test_client().get(path)
    names = [name.lower() for name, _ in answer.headers]
    for name in ("content-security-policy", "strict-transport-security", "x-content-type-options",
                 "referrer-policy", "cache-control", "x-request-id"):  # fmt: skip
        assert names.count(name) == 1, (path, name)
