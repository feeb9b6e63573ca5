"""Settings: production by default, and a bad value stops start-up with one line naming it."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from config import SETTINGS, ConfigError, load_config
from devtools.gunicorn import ROOT

STRONG_SECRET = "Zq3v9Lr0pXy7Kd2Nw8Ht5Bc1Ms6Fg4Aj-u"
# Port 1: nothing listens, so nothing these tests start can write to a real Redis.
PRODUCTION = {"SECRET_KEY": STRONG_SECRET, "REDIS_URL": "redis://127.0.0.1:1/0"}

# (environment on top of a valid production one, variable the one-line message must name)
REFUSED = [
    ({"SECRET_KEY": ""}, "SECRET_KEY"),
    ({"SECRET_KEY": "changeme"}, "SECRET_KEY"),
    ({"SECRET_KEY": "short-but-random-9f3a"}, "SECRET_KEY"),
    ({"REDIS_URL": ""}, "REDIS_URL"),
    ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL"),
    ({"REDIS_URL": "redis://cache:port/0"}, "REDIS_URL"),
    ({"REDIS_URL": "redis:///0"}, "REDIS_URL"),
    ({"RATELIMIT_DEFAULT": "lots"}, "RATELIMIT_DEFAULT"),
    ({"RATELIMIT_ANONYMOUS": "10/fortnight"}, "RATELIMIT_ANONYMOUS"),
    ({"RATELIMIT_DEFAULT": "10/second;100/minute"}, "RATELIMIT_DEFAULT"),
    ({"RATELIMIT_FAIL_OPEN": "maybe"}, "RATELIMIT_FAIL_OPEN"),
    ({"AGENT_BACKEND": "gpt"}, "AGENT_BACKEND"),
    ({"AGENT_BACKEND": "openai"}, "OPENAI_BASE_URL"),
    ({"AGENT_BACKEND": "openai", "OPENAI_BASE_URL": "api.openai.com/v1"}, "OPENAI_BASE_URL"),
    ({"CORS_ORIGINS": "*"}, "CORS_ORIGINS"),
    ({"CORS_ORIGINS": "https://ok.example.com,not-an-origin"}, "CORS_ORIGINS"),
    # Anything that looks like a pattern except "https://*.<domain>", or is not an origin:
    # Flask-CORS would take a string with regex characters as an unanchored regex.
    *(
        ({"CORS_ORIGINS": bad}, "CORS_ORIGINS")
        for bad in (
            "https://app.example.com/",
            "https://app.example.com/path",
            "app.example.com",
            "//app.example.com",
            "null",
            "ftp://app.example.com",
            "https://",
            "https://user@app.example.com",
            "https://app.example.com?x=1",
            "https://app.example.com#top",
            "https://app.example.com:99999",
            "https://app.example.com:0",
            r"https://app\.example\.com",
            "https://app.example.(com|net)",
            "https://app.example.com$",
            "^https://app.example.com",
            "https://[a-z]+.example.com",
            "https://app.example.co?",
            "https://*",
            "https://*.com",
            "https://*example.com",
            "https://a.*.example.com",
            "https://*.*.example.com",
            "https://*.example.com:8443",
            "https://*.example.com/",
            "http://*.example.com",
            "*.example.com",
            "https://ok.example.com,*",
        )
    ),
    ({"ALLOWED_HOSTS": "https://api.example.com"}, "ALLOWED_HOSTS"),
    ({"ALLOWED_HOSTS": "api.example.com/"}, "ALLOWED_HOSTS"),
    ({"ALLOWED_HOSTS": "*"}, "ALLOWED_HOSTS"),
    ({"ALLOWED_HOSTS": "*.example.com"}, "ALLOWED_HOSTS"),
    ({"ALLOWED_HOSTS": "api.example.com:http"}, "ALLOWED_HOSTS"),
    ({"ALLOWED_HOSTS": "api.example.com:70000"}, "ALLOWED_HOSTS"),
    ({"ALLOWED_HOSTS": "bad host"}, "ALLOWED_HOSTS"),
    ({"COMMAND_CENTER_URL": "javascript:alert(1)"}, "COMMAND_CENTER_URL"),
    ({"PORT": "http"}, "PORT"),
    ({"WEB_CONCURRENCY": "0"}, "WEB_CONCURRENCY"),
    ({"TRUSTED_PROXY_COUNT": "one"}, "TRUSTED_PROXY_COUNT"),
    ({"FORCE_HTTPS": "sometimes"}, "FORCE_HTTPS"),
    ({"ENABLE_METRICS": "perhaps"}, "ENABLE_METRICS"),
    ({"GUNICORN_TIMEOUT": "0"}, "GUNICORN_TIMEOUT"),
    ({"FLASK_ENV": "staging"}, "FLASK_ENV"),
]


def clean_environ(**extra: str) -> dict[str, str]:
    """The process environment without any gateway setting, plus ``extra``."""
    names = {s.env for s in SETTINGS} | {"FLASK_ENV", "FLASK_APP"}
    env = {k: v for k, v in os.environ.items() if k not in names}
    env.update(extra)
    return env


def test_production_is_the_default_with_the_contract_defaults() -> None:
    config = load_config(PRODUCTION)
    assert config["FLASK_ENV"] == "production"
    assert config["DEBUG"] is False and config["TESTING"] is False
    assert config["FORCE_HTTPS"] is True and config["TRUSTED_PROXY_COUNT"] == 0
    assert config["ALLOWED_HOSTS"] == ()
    assert config["SESSION_COOKIE_SECURE"] is True and config["SESSION_COOKIE_HTTPONLY"] is True
    assert (config["PORT"], config["WEB_CONCURRENCY"]) == (10000, 2)
    assert config["CORS_ORIGINS"] == ()
    assert (config["RATELIMIT_DEFAULT"], config["RATELIMIT_ANONYMOUS"]) == ("120/minute", "30/minute")
    assert config["RATELIMIT_FAIL_OPEN"] is False
    assert config["COMMAND_CENTER_URL"] == "/docs"
    assert (config["AGENT_BACKEND"], config["AGENT_BUILTIN_DELAY_MS"]) == ("builtin", 100)
    assert config["ENABLE_METRICS"] is True and config["ENABLE_STREAMING"] is True


@pytest.mark.parametrize("name", ["development", "testing"])
def test_non_production_trusts_no_proxy_and_serves_plain_http(name: str) -> None:
    config = load_config({"FLASK_ENV": name, "REDIS_URL": "redis://127.0.0.1:1/0"})
    assert config["FLASK_ENV"] == name
    assert config["TRUSTED_PROXY_COUNT"] == 0 and config["FORCE_HTTPS"] is False
    assert config["SESSION_COOKIE_SECURE"] is False


def test_values_are_parsed_from_the_environment() -> None:
    config = load_config(
        {
            **PRODUCTION,
            "REDIS_URL": "rediss://:pw@cache.internal:6380/2",
            "CORS_ORIGINS": "https://app.example.com, https://Admin.Example.com:8443, http://[::1]:3000",
            "ALLOWED_HOSTS": "API.example.com, .example.org, localhost:8080, [::1]:10000",
            "RATELIMIT_DEFAULT": "100/minute",
            "RATELIMIT_FAIL_OPEN": "yes",
            "WEB_CONCURRENCY": "4",
            "AGENT_BACKEND": "openai",
            "OPENAI_BASE_URL": "https://llm.example.com/v1/",
            "ENABLE_STREAMING": "false",
        }
    )
    assert config["REDIS_URL"] == "rediss://:pw@cache.internal:6380/2"
    assert config["CORS_ORIGINS"] == (
        "https://app.example.com",
        "https://admin.example.com:8443",
        "http://[::1]:3000",
    )
    assert config["ALLOWED_HOSTS"] == ("api.example.com", ".example.org", "localhost:8080", "[::1]:10000")
    assert config["RATELIMIT_DEFAULT"] == "100/minute" and config["RATELIMIT_FAIL_OPEN"] is True
    assert config["WEB_CONCURRENCY"] == 4
    assert config["OPENAI_BASE_URL"] == "https://llm.example.com/v1"
    assert config["ENABLE_STREAMING"] is False
    assert load_config({**PRODUCTION, "REDIS_URL": "unix:///run/redis.sock"})["REDIS_URL"].startswith("unix:")


@pytest.mark.parametrize("name", ["production", "development", "testing"])
def test_one_trusted_proxy_only_on_render(name: str) -> None:
    base = {**PRODUCTION, "FLASK_ENV": name}
    assert load_config(base)["TRUSTED_PROXY_COUNT"] == 0
    assert load_config({**base, "RENDER": "true"})["TRUSTED_PROXY_COUNT"] == 1
    assert load_config({**base, "RENDER": "true", "TRUSTED_PROXY_COUNT": "0"})["TRUSTED_PROXY_COUNT"] == 0
    assert load_config({**base, "TRUSTED_PROXY_COUNT": "2"})["TRUSTED_PROXY_COUNT"] == 2


def test_allowed_hosts_default_to_render_hostname_in_production_only() -> None:
    render = {**PRODUCTION, "RENDER": "true", "RENDER_EXTERNAL_HOSTNAME": "gw.onrender.com"}
    assert load_config(render)["ALLOWED_HOSTS"] == ("gw.onrender.com",)
    assert load_config({**render, "ALLOWED_HOSTS": "api.example.com"})["ALLOWED_HOSTS"] == (
        "api.example.com",
    )
    assert load_config({**render, "FLASK_ENV": "development"})["ALLOWED_HOSTS"] == ()


def test_a_wildcard_origin_becomes_an_anchored_pattern() -> None:
    (pattern,) = load_config({**PRODUCTION, "CORS_ORIGINS": "https://*.Example.com"})["CORS_ORIGINS"]
    assert isinstance(pattern, re.Pattern)
    assert pattern.match("https://a.example.com") and pattern.match("https://a.b.example.com")
    for miss in ("https://example.com", "https://a.example.com.evil.net", "https://a.example.com\n"):
        assert not pattern.match(miss)


@pytest.mark.parametrize(("env", "variable"), REFUSED)
def test_load_config_refuses_with_one_line_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as refused:
        load_config({**PRODUCTION, **env})
    message = str(refused.value)
    assert variable in message
    assert "\n" not in message


# A few of the refusals again, through the real entry points: one line on stderr, no traceback.
ENTRY_CASES = [
    ({"SECRET_KEY": ""}, "SECRET_KEY"),
    ({"SECRET_KEY": "changeme"}, "SECRET_KEY"),
    ({"REDIS_URL": ""}, "REDIS_URL"),
    ({"RATELIMIT_DEFAULT": "lots"}, "RATELIMIT_DEFAULT"),
    ({"AGENT_BACKEND": "gpt"}, "AGENT_BACKEND"),
    ({"REDIS_URL": "http://cache:6379"}, "REDIS_URL"),
    ({"REDIS_URL": "redis+sentinel://s1:26379"}, "REDIS_URL"),  # no master named
    ({"REDIS_URL": "redis+cluster://n1:7000"}, "JOBS_REDIS_URL"),  # RQ needs a non-cluster Redis
]


def assert_one_clean_line(done: subprocess.CompletedProcess[str], variable: str) -> None:
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gateway: configuration error:") and variable in lines[0]


@pytest.mark.parametrize(("env", "variable"), ENTRY_CASES)
def test_gunicorn_refuses_to_start_with_one_line(env: dict[str, str], variable: str) -> None:
    command = [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "wsgi:app"]
    environ = clean_environ(**{**PRODUCTION, **env, "PORT": "1"})  # never binds: refused first
    done = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)
    assert_one_clean_line(done, variable)


@pytest.mark.parametrize(("env", "variable"), ENTRY_CASES[::2])
def test_flask_cli_refuses_with_one_line(env: dict[str, str], variable: str) -> None:
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "keys", "list"]
    environ = clean_environ(**{**PRODUCTION, **env})
    done = subprocess.run(command, cwd=ROOT, env=environ, capture_output=True, text=True, timeout=60)
    assert_one_clean_line(done, variable)


def test_flask_cli_loads_a_valid_production_config() -> None:
    command = [sys.executable, "-m", "flask", "--app", "wsgi", "--help"]
    done = subprocess.run(command, cwd=ROOT, env=clean_environ(**PRODUCTION), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "configuration error" not in done.stderr
    assert "keys" in done.stdout
