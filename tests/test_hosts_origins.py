"""Who the gateway answers: the CORS allow-list and its wildcard form, the Host allow-list, the proxy default.

Origins are checked in two places, the CORS answer (Access-Control-Allow-Origin) and the
refusal of cookie-authenticated changes from foreign sites (auth/origin.py); both must agree
on every near miss below. Hosts: a forged Host must neither be served nor become a redirect.
"""

from __future__ import annotations

import http.client
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from flask import Flask
from flask.testing import FlaskClient
from werkzeug.test import TestResponse

from devtools.gunicorn import GunicornServer
from gateway import create_app

WILDCARD = "https://*.example.com"
EXACT = "https://app.partner.com"

# Origins a browser may send that the list "https://*.example.com, https://app.partner.com" admits.
# Scheme and host are case-insensitive (RFC 6454); browsers send them lowercase anyway.
ADMITTED = [
    "https://a.example.com",
    "https://a.b.example.com",
    "https://xn--bcher-kva.example.com",
    "https://a-1.example.com",
    "HTTPS://A.EXAMPLE.COM",
    EXACT,
    "https://APP.partner.com",
]
NEAR_MISSES = [
    "https://example.com",  # the apex: only subdomains were allowed
    "https://xexample.com",
    "https://example.com.evil.net",
    "https://a.example.com.evil.net",
    "https://xexample.com.evil.net",
    "https://evil.net/.example.com",
    "https://evil.net?.example.com",
    "https://evil.net#.example.com",
    "https://evil.netxexample.com",
    "xhttps://a.example.com",  # prefixes
    "https://https://a.example.com",
    "https://evil.net/https://a.example.com",
    "https://.example.com",
    "https://a..example.com",
    "https://-a.example.com",
    "https://a_b.example.com",
    "https://a.example.com.",
    "https://a.example.com/",
    "http://a.example.com",  # another scheme
    "wss://a.example.com",
    "https://a.example.com:8443",  # another port
    "https://a.example.com:443",
    "https://evil.net@a.example.com",  # userinfo tricks
    "https://a.example.com@evil.net",
    "https://a.example.com%2eevil.net",
    "null",
    "https://app.partner.com.evil.net",
    "https://app.partner.comx",
    "https://xapp.partner.com",
    "http://app.partner.com",
    "https://app.partner.com:444",
    "https://sub.app.partner.com",
]


@pytest.fixture
def make_app(test_env: dict[str, str], r: object) -> Callable[..., Flask]:
    def make(**env: str) -> Flask:
        return create_app({**test_env, "RATELIMIT_ANONYMOUS": "100000/minute", **env})

    return make


@pytest.fixture
def cors_client(make_app: Callable[..., Flask]) -> FlaskClient:
    return make_app(CORS_ORIGINS=f"{WILDCARD},{EXACT}").test_client()


def cookie_write(client: FlaskClient, origin: str) -> int:
    """The status of a login attempt from ``origin``: 403 when the Origin check refuses it."""
    return client.post("/auth/login", json={}, headers={"Origin": origin}).status_code


@pytest.mark.parametrize("origin", ADMITTED)
def test_admitted_origins_get_cors_and_may_write(cors_client: FlaskClient, origin: str) -> None:
    answer = cors_client.get("/", headers={"Origin": origin})
    assert answer.headers.get("Access-Control-Allow-Origin") == origin
    assert answer.headers.get("Access-Control-Allow-Credentials") == "true"
    assert cookie_write(cors_client, origin) == 400  # past the Origin check: the empty body is refused


@pytest.mark.parametrize("origin", NEAR_MISSES)
def test_near_miss_origins_get_neither(cors_client: FlaskClient, origin: str) -> None:
    answer = cors_client.get("/", headers={"Origin": origin})
    assert "Access-Control-Allow-Origin" not in answer.headers
    preflight = cors_client.options(
        "/auth/me", headers={"Origin": origin, "Access-Control-Request-Method": "POST"}
    )
    assert "Access-Control-Allow-Origin" not in preflight.headers
    assert cookie_write(cors_client, origin) == 403


def test_the_gateway_itself_may_write_whatever_the_list(cors_client: FlaskClient) -> None:
    assert cookie_write(cors_client, "http://localhost") == 400


# ---- ALLOWED_HOSTS ------------------------------------------------------------------------------

HOSTS = "api.example.com,.example.org,localhost:8080"
SERVED_HOSTS = [
    "api.example.com",
    "API.Example.COM",
    "api.example.com:8443",
    "example.org",
    "a.b.example.org",
]
SERVED_HOSTS += ["localhost:8080"]
FOREIGN_HOSTS = ["evil.example", "api.example.com.evil.net", "xapi.example.com", "a.api.example.com"]
FOREIGN_HOSTS += ["xexample.org", "example.org.evil.net", "localhost", "localhost:9090", "localhost:8080x"]
FOREIGN_HOSTS += ["bad host", "evil.example/x", "api.example.com@evil.example", ""]


def assert_error(answer: TestResponse, status: int, path: str) -> None:
    assert answer.status_code == status
    body = answer.get_json()
    assert body["status_code"] == status and body["path"] == path
    assert body["error"] and body["message"]
    assert "Location" not in answer.headers


def with_host(client: FlaskClient, path: str, host: str, **kwargs: object) -> TestResponse:
    return client.get(path, environ_overrides={"HTTP_HOST": host}, **kwargs)  # type: ignore[arg-type]


@pytest.mark.parametrize("host", SERVED_HOSTS)
def test_allowed_hosts_are_served(make_app: Callable[..., Flask], host: str) -> None:
    client = make_app(ALLOWED_HOSTS=HOSTS).test_client()
    assert with_host(client, "/", host).status_code == 200


@pytest.mark.parametrize("host", FOREIGN_HOSTS)
def test_foreign_hosts_get_400_json(make_app: Callable[..., Flask], host: str) -> None:
    client = make_app(ALLOWED_HOSTS=HOSTS).test_client()
    assert_error(with_host(client, "/", host), 400, "/")
    assert_error(client.post("/events", json={}, environ_overrides={"HTTP_HOST": host}), 400, "/events")


def production(make_app: Callable[..., Flask], **env: str) -> Flask:
    return make_app(FLASK_ENV="production", SECRET_KEY=secrets.token_urlsafe(48), **env)


def test_the_https_redirect_only_points_at_allowed_hosts(make_app: Callable[..., Flask]) -> None:
    client = production(make_app, ALLOWED_HOSTS=HOSTS).test_client()
    assert_error(with_host(client, "/docs", "evil.example"), 400, "/docs")
    answer = with_host(client, "/docs?x=1", "api.example.com")
    assert answer.status_code == 308
    assert answer.headers["Location"] == "https://api.example.com/docs?x=1"
    assert with_host(client, "/", "a.example.org").headers["Location"] == "https://a.example.org/"


def test_without_a_list_a_malformed_host_is_refused_not_redirected(make_app: Callable[..., Flask]) -> None:
    # "https:///evil.example/x" would take a browser to evil.example.
    client = production(make_app).test_client()
    for host in ("bad host", "evil.example/x", "a\\b"):
        assert_error(with_host(client, "/evil.example/x", host), 400, "/evil.example/x")
    assert with_host(client, "/", "anything.example").headers["Location"] == "https://anything.example/"


@pytest.mark.parametrize("path", ["/healthz", "/health", "/readyz"])
def test_health_routes_answer_any_host(make_app: Callable[..., Flask], path: str) -> None:
    client = production(make_app, ALLOWED_HOSTS=HOSTS).test_client()
    for host in ("10.0.0.7:10000", "evil.example", "bad host"):
        assert with_host(client, path, host).status_code == 200


def test_render_external_hostname_is_the_production_default(make_app: Callable[..., Flask]) -> None:
    app = production(make_app, RENDER_EXTERNAL_HOSTNAME="gw.onrender.com", FORCE_HTTPS="false")
    assert app.config["ALLOWED_HOSTS"] == ("gw.onrender.com",)
    client = app.test_client()
    assert with_host(client, "/", "gw.onrender.com").status_code == 200
    assert_error(with_host(client, "/", "evil.example"), 400, "/")
    listed = production(make_app, RENDER_EXTERNAL_HOSTNAME="gw.onrender.com", ALLOWED_HOSTS="api.example.com")
    assert listed.config["ALLOWED_HOSTS"] == ("api.example.com",)
    assert production(make_app).config["ALLOWED_HOSTS"] == ()  # anywhere else: any host


# ---- TRUSTED_PROXY_COUNT --------------------------------------------------------------------------


def startup_lines(capfd: pytest.CaptureFixture[str]) -> list[str]:
    err = capfd.readouterr().err
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    return [line["message"] for line in lines if "TRUSTED_PROXY_COUNT" in line["message"]]


def test_startup_says_which_proxy_count_applies_and_why(
    make_app: Callable[..., Flask], capfd: pytest.CaptureFixture[str]
) -> None:
    capfd.readouterr()
    production(make_app)
    (line,) = startup_lines(capfd)
    assert "TRUSTED_PROXY_COUNT=0" in line and "RENDER is not set" in line
    production(make_app, RENDER="true")
    (line,) = startup_lines(capfd)
    assert "TRUSTED_PROXY_COUNT=1" in line and "RENDER is set" in line
    production(make_app, RENDER="true", TRUSTED_PROXY_COUNT="2")
    (line,) = startup_lines(capfd)
    assert "TRUSTED_PROXY_COUNT=2" in line and "set in the environment" in line


def test_a_spoofed_forwarded_for_does_not_reset_the_anonymous_limit(make_app: Callable[..., Flask]) -> None:
    """Production defaults off Render: 31 requests, each claiming another IP, meet the 30/minute limit."""
    app = production(make_app, RATELIMIT_ANONYMOUS="30/minute")
    client = app.test_client()
    statuses = [
        client.get(
            "/", base_url="https://localhost", headers={"X-Forwarded-For": f"198.51.100.{n}"}
        ).status_code
        for n in range(31)
    ]
    assert statuses[:30] == [200] * 30
    assert statuses[30] == 429


def raw_get(url: str, path: str, host: str) -> tuple[int, dict[str, str], bytes]:
    """A GET with exactly this Host header, as a client on the network would send it."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    try:
        conn.request("GET", path, headers={"Host": host})
        answer = conn.getresponse()
        return answer.status, dict(answer.getheaders()), answer.read()
    finally:
        conn.close()


@pytest.mark.gunicorn
def test_hosts_and_the_proxy_default_through_gunicorn(
    gunicorn: Callable[..., GunicornServer], tmp_path: Path
) -> None:
    env = {
        "FLASK_ENV": "production",
        "SECRET_KEY": secrets.token_urlsafe(48),
        "ALLOWED_HOSTS": "api.example.com",
    }
    server = gunicorn(workers=2, env={**env, "RENDER": ""})  # as off Render, whatever this machine is
    status, headers, body = raw_get(server.url, "/docs", "evil.example")
    assert status == 400 and "Location" not in headers
    assert json.loads(body)["status_code"] == 400
    status, headers, _ = raw_get(server.url, "/docs", "api.example.com")
    assert status == 308 and headers["Location"] == "https://api.example.com/docs"
    assert raw_get(server.url, "/healthz", "evil.example")[0] == 200
    logged = (tmp_path / "gunicorn-0.log").read_text()
    lines = [line for line in logged.splitlines() if "trusted proxies:" in line]
    assert lines and all("TRUSTED_PROXY_COUNT=0" in line and "RENDER is not set" in line for line in lines)
