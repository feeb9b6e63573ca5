"""Every setting of the gateway, parsed and validated once at start-up.

Production is the default: development and testing are opted into with
``FLASK_ENV``. A bad value raises :class:`ConfigError` whose message is one line
naming the variable, so an operator sees the cause instead of a traceback at
the first request.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from config.allowlists import parse_hosts, parse_origins
from config.parsers import (
    ConfigError,
    parse_bool,
    parse_choice,
    parse_float,
    parse_http_url,
    parse_int,
    parse_limit,
    parse_limits,
    parse_route_limits,
    parse_str,
    parse_url_or_path,
)
from config.redis_url import CLUSTER, parse_redis_target, parse_redis_url

__all__ = [
    "Config",
    "ConfigError",
    "DevelopmentConfig",
    "ProductionConfig",
    "TestingConfig",
    "load_config",
]

# Values that are never acceptable as a production SECRET_KEY, whatever their length.
_PLACEHOLDER_SECRETS = {"changeme", "change-me", "secret", "dev", "development", "test", "please-change"}
MIN_SECRET_LENGTH = 32


@dataclass(frozen=True)
class Setting:
    """One environment variable: how to parse it and its default per environment.

    A callable default is called with the environment and gives the default as text (a
    setting whose default depends on the platform, such as RENDER)."""

    env: str
    parse: Callable[[str, str], Any]
    default: Any = None


def _proxies_on_render(env: Mapping[str, str]) -> str:
    """TRUSTED_PROXY_COUNT's default: Render's one proxy where RENDER is set, none elsewhere."""
    return "1" if env.get("RENDER", "").strip() else "0"


def _render_hostname(env: Mapping[str, str]) -> str:
    """ALLOWED_HOSTS's production default: Render's public name of the service, else any host."""
    return env.get("RENDER_EXTERNAL_HOSTNAME", "").strip()


# The one table of environment variables (CONTRACT section 2 plus operational knobs).
SETTINGS: tuple[Setting, ...] = (
    Setting("SECRET_KEY", parse_str),
    # Keys the API-key digests; defaults to SECRET_KEY. Changing it invalidates every key.
    Setting("API_KEY_HMAC_SECRET", parse_str),
    Setting("REDIS_URL", parse_redis_url),
    # RQ's Redis (standalone or Sentinel: RQ has no Cluster support); empty: REDIS_URL.
    Setting("JOBS_REDIS_URL", parse_redis_url),
    # Acknowledged writes wait (Redis WAIT) until this many replicas have them; 0: no wait.
    Setting("REDIS_WAIT_REPLICAS", parse_int, 0),
    Setting("REDIS_WAIT_TIMEOUT_MS", parse_int, 500),
    Setting("PORT", parse_int, 10000),
    Setting("WEB_CONCURRENCY", parse_int, 2),
    # gunicorn only (gunicorn.conf.py): interface, greenlets per worker, timeouts in seconds.
    Setting("HOST", parse_str, "0.0.0.0"),  # noqa: S104 - a container publishes its port
    Setting("WORKER_CONNECTIONS", parse_int, 1000),
    Setting("GUNICORN_TIMEOUT", parse_int, 30),
    Setting("GUNICORN_GRACEFUL_TIMEOUT", parse_int, 20),
    Setting("GUNICORN_KEEPALIVE", parse_int, 5),
    Setting("GUNICORN_MAX_REQUESTS", parse_int, 0),
    Setting("GUNICORN_LOG_LEVEL", parse_choice("debug", "info", "warning", "error", "critical"), "info"),
    # Render sets RENDER (and RENDER_EXTERNAL_HOSTNAME, the service's public name) itself.
    Setting("RENDER", parse_str, ""),
    Setting("RENDER_EXTERNAL_HOSTNAME", parse_str, ""),
    # 1 only where a proxy is known to stand in front (Render): elsewhere, as with a bare
    # `docker run -p`, believing X-Forwarded-For would let clients pick their counted IP.
    Setting("TRUSTED_PROXY_COUNT", parse_int, _proxies_on_render),
    Setting("FORCE_HTTPS", parse_bool, True),
    Setting("CORS_ORIGINS", parse_origins, ()),
    # Host values served (config/allowlists.py); empty: any. Production defaults to Render's name.
    Setting("ALLOWED_HOSTS", parse_hosts, ()),
    # Admin console sessions (server-side in Redis): idle and absolute lifetimes.
    Setting("SESSION_IDLE_MINUTES", parse_int, 30),
    Setting("SESSION_ABSOLUTE_HOURS", parse_int, 12),
    Setting("RATELIMIT_DEFAULT", parse_limit, "120/minute"),
    Setting("RATELIMIT_ANONYMOUS", parse_limit, "30/minute"),
    Setting("RATELIMIT_LOGIN", parse_limits, "5/minute"),
    # Failed logins per email across all IPs (credential stuffing); RATELIMIT_LOGIN is per IP.
    Setting("RATELIMIT_LOGIN_EMAIL", parse_limits, "100/hour"),
    Setting("RATELIMIT_FAIL_OPEN", parse_bool, False),
    # Units a worker may lease at once from a limit with plenty left (gateway/ratelimit/leases.py); 1 = off.
    Setting("RATELIMIT_LEASE_MAX", parse_int, 32),
    # Stream opens per identity (GET /agents/stream), on top of its own rate limit.
    Setting("RATELIMIT_STREAM_OPENS", parse_limits, "60/minute"),
    # Operator-tightened routes: "endpoint=limits, ..." (for example events.create=10/minute).
    Setting("RATELIMIT_ROUTES", parse_route_limits, {}),
    # The framework shortcuts of gateway/fastpath (measured there); false runs on public APIs only.
    Setting("GATEWAY_FASTPATH", parse_bool, True),
    Setting("COMMAND_CENTER_URL", parse_url_or_path, "/docs"),
    Setting("AGENT_BACKEND", parse_choice("builtin", "openai"), "builtin"),
    Setting("AGENT_BUILTIN_DELAY_MS", parse_int, 100),
    Setting("OPENAI_BASE_URL", parse_http_url),
    Setting("OPENAI_API_KEY", parse_str),
    Setting("OPENAI_MODEL", parse_str, "gpt-4o-mini"),
    Setting("OPENAI_CONNECT_TIMEOUT", parse_float, 3.0),
    Setting("OPENAI_READ_TIMEOUT", parse_float, 30.0),
    # Per-process circuit breaker on the openai backend: opens after this many consecutive
    # failures and refuses at once for the cool-down, then lets one trial call through.
    Setting("OPENAI_BREAKER_FAILURES", parse_int, 5),
    Setting("OPENAI_BREAKER_COOLDOWN_SECONDS", parse_float, 30.0),
    # What one reply may cost upstream: the history sent (estimated tokens, newest messages
    # and the system prompt kept) and the reply's max_tokens.
    Setting("AGENT_HISTORY_TOKENS", parse_int, 8192),
    Setting("OPENAI_MAX_TOKENS", parse_int, 1024),
    # Token quotas (gateway/ratelimit/tokens.py): tokens a reply reserves when it starts (and
    # each time it outgrows its reservation), and how long a reservation lives without being
    # renewed by its stream or job: what a killed worker holds back at most.
    Setting("AGENT_TOKEN_RESERVE", parse_int, 1024),
    Setting("AGENT_TOKEN_RESERVATION_SECONDS", parse_int, 60),
    Setting("ENABLE_METRICS", parse_bool, True),
    Setting("ENABLE_STREAMING", parse_bool, True),
    Setting("MAX_CONTENT_LENGTH", parse_int, 1024 * 1024),
    # Seconds for a whole request body (core/bodies.py): a trickling client gets 408.
    Setting("BODY_READ_TIMEOUT", parse_float, 10.0),
    Setting("REDIS_SOCKET_TIMEOUT", parse_float, 0.5),
    Setting("REDIS_CONNECT_TIMEOUT", parse_float, 0.5),
    Setting("REDIS_MAX_CONNECTIONS", parse_int, 200),
    # Pooled connections idle this long are closed, above REDIS_POOL_MIN_IDLE per pool (0: keep).
    Setting("REDIS_POOL_IDLE_SECONDS", parse_float, 30.0),
    Setting("REDIS_POOL_MIN_IDLE", parse_int, 2),
    Setting("STREAM_MAX_CONCURRENT_PER_KEY", parse_int, 5),
    Setting("STREAM_MAX_SECONDS", parse_int, 300),
    Setting("STREAM_HEARTBEAT_SECONDS", parse_float, 15.0),
    # How long a stream's frames stay in Redis for resuming after Last-Event-ID.
    Setting("STREAM_RESUME_SECONDS", parse_int, 300),
    # Lifetime of a stream ticket (POST /agents/stream/ticket), 1..120 s (CONTRACT section 8).
    Setting("STREAM_TICKET_SECONDS", parse_int, 60),
    Setting("EVENTS_MAX_LENGTH", parse_int, 100_000),
    # What one tenant may keep (README "Limits per tenant"): the largest event (event_type +
    # data as stored JSON, bytes), how long events are kept, sessions per identity, and jobs
    # per owner not yet finished.
    Setting("EVENTS_MAX_BYTES", parse_int, 65536),
    Setting("EVENTS_RETENTION_DAYS", parse_int, 30),
    Setting("AGENT_SESSIONS_MAX", parse_int, 1000),
    Setting("JOBS_QUEUED_MAX", parse_int, 100),
    # Quota alerts (docs/usage-and-alerts.md): POSTed, signed, by the job worker.
    Setting("WEBHOOK_URL", parse_str),
    Setting("WEBHOOK_SECRET", parse_str),
    Setting("WEBHOOK_TIMEOUT", parse_float, 5.0),
    # Prometheus shows per-key token counters for this many keys (most tokens), the rest as "other".
    Setting("USAGE_PROMETHEUS_TOP_KEYS", parse_int, 20),
    Setting("LOG_LEVEL", parse_choice("DEBUG", "INFO", "WARNING", "ERROR"), "INFO"),
    # Access lines are written in batches this often (0: each line at once; gateway/logging.py).
    Setting("ACCESS_LOG_FLUSH_MS", parse_int, 100),
)


class Config:
    """Base settings shared by every environment; subclasses change defaults only."""

    ENV_NAME = "base"
    DEBUG = False
    TESTING = False
    # Per-environment defaults that differ from the SETTINGS table.
    DEFAULTS: Mapping[str, Any] = {}
    REQUIRED: tuple[str, ...] = ()
    # API clients are programs: never redirect them to a login page.
    SESSION_COOKIE_NAME = "gw_session"
    SESSION_COOKIE_HTTPONLY = True
    SESSION_COOKIE_SECURE = True
    SESSION_COOKIE_SAMESITE = "Lax"
    JSON_SORT_KEYS = False

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> dict[str, Any]:
        """Parse every variable of SETTINGS from ``environ`` into a Flask config dict."""
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {k: getattr(cls, k) for k in dir(cls) if k.isupper()}
        given: set[str] = set()
        for setting in SETTINGS:
            raw = env.get(setting.env)
            if raw is None or raw.strip() == "":
                default = cls.DEFAULTS.get(setting.env, setting.default)
                if callable(default):  # a default that depends on the platform (RENDER...)
                    default = default(env)
                values[setting.env] = _parse_default(setting, default)
            else:
                values[setting.env] = setting.parse(setting.env, raw.strip())
                given.add(setting.env)
        values["FLASK_ENV"] = cls.ENV_NAME
        # Which settings the environment set (the rest took defaults): start-up logs say why.
        values["SETTINGS_FROM_ENV"] = frozenset(given)
        cls.validate(values)
        _validate_redis(values)
        return values

    @classmethod
    def validate(cls, values: Mapping[str, Any]) -> None:
        """Refuse settings that cannot work together; one line naming the variable."""
        for name in cls.REQUIRED:
            if not values.get(name):
                raise ConfigError(f"{name} is required when FLASK_ENV={cls.ENV_NAME}")
        if values["AGENT_BACKEND"] == "openai" and not values["OPENAI_BASE_URL"]:
            raise ConfigError("OPENAI_BASE_URL is required when AGENT_BACKEND=openai")
        positive = ("PORT", "WEB_CONCURRENCY", "MAX_CONTENT_LENGTH", "STREAM_MAX_SECONDS")
        positive += ("SESSION_IDLE_MINUTES", "SESSION_ABSOLUTE_HOURS")
        positive += ("EVENTS_MAX_BYTES", "EVENTS_RETENTION_DAYS", "AGENT_SESSIONS_MAX", "JOBS_QUEUED_MAX")
        positive += ("BODY_READ_TIMEOUT",)
        positive += ("AGENT_HISTORY_TOKENS", "OPENAI_MAX_TOKENS")
        positive += ("AGENT_TOKEN_RESERVE", "AGENT_TOKEN_RESERVATION_SECONDS")
        for name in (*positive, "WORKER_CONNECTIONS", "GUNICORN_TIMEOUT", "GUNICORN_GRACEFUL_TIMEOUT"):
            if values[name] <= 0:
                raise ConfigError(f"{name} must be a positive integer, got {values[name]}")
        if values["AGENT_TOKEN_RESERVATION_SECONDS"] < 10:
            # A live stream renews its reservation every 3 s (with its slot): below 10 s a busy
            # worker's live reservations would lapse under it.
            raise ConfigError("AGENT_TOKEN_RESERVATION_SECONDS must be at least 10")
        if not 1 <= values["STREAM_TICKET_SECONDS"] <= 120:
            raise ConfigError(
                f"STREAM_TICKET_SECONDS must be 1 to 120, got {values['STREAM_TICKET_SECONDS']}"
            )
        if values["WEBHOOK_URL"] and not values["WEBHOOK_SECRET"]:
            raise ConfigError("WEBHOOK_SECRET is required when WEBHOOK_URL is set (alerts are signed)")
        if values["WEBHOOK_URL"] and urlsplit(values["WEBHOOK_URL"]).scheme not in ("http", "https"):
            raise ConfigError("WEBHOOK_URL must be an http:// or https:// URL")
        if values["TRUSTED_PROXY_COUNT"] < 0 or values["AGENT_BUILTIN_DELAY_MS"] < 0:
            raise ConfigError("TRUSTED_PROXY_COUNT and AGENT_BUILTIN_DELAY_MS cannot be negative")


def _validate_redis(values: dict[str, Any]) -> None:
    """JOBS_REDIS_URL defaults to REDIS_URL, except on a cluster, which RQ cannot use."""
    url, jobs = values.get("REDIS_URL"), values.get("JOBS_REDIS_URL")
    if jobs and parse_redis_target("JOBS_REDIS_URL", jobs).topology == CLUSTER:
        raise ConfigError(
            "JOBS_REDIS_URL cannot be a cluster (RQ has no Cluster support): "
            "name a standalone or Sentinel Redis"
        )
    if url and parse_redis_target("REDIS_URL", url).topology == CLUSTER and not jobs:
        raise ConfigError(
            "JOBS_REDIS_URL is required when REDIS_URL is a cluster (RQ has no Cluster support)"
        )
    values["JOBS_REDIS_URL"] = jobs or url
    if values["REDIS_WAIT_REPLICAS"] < 0 or values["REDIS_WAIT_TIMEOUT_MS"] <= 0:
        raise ConfigError("REDIS_WAIT_REPLICAS cannot be negative and REDIS_WAIT_TIMEOUT_MS must be positive")


def _parse_default(setting: Setting, default: Any) -> Any:
    """Defaults are written as they would appear in the environment when they are strings."""
    if isinstance(default, str) and setting.parse is not parse_str:
        return setting.parse(setting.env, default)
    return default


class ProductionConfig(Config):
    """The default: https, secure cookies, strict secrets; on Render, its proxy and hostname."""

    ENV_NAME = "production"
    DEFAULTS = {"ALLOWED_HOSTS": _render_hostname}
    REQUIRED = ("SECRET_KEY", "REDIS_URL")
    # The __Host- prefix makes browsers refuse the cookie unless it is Secure, for Path=/ and
    # without Domain: a sibling subdomain or a plain-http page cannot plant or shadow it.
    SESSION_COOKIE_NAME = "__Host-gw_session"
    SESSION_COOKIE_PATH = "/"
    SESSION_COOKIE_DOMAIN = None

    @classmethod
    def validate(cls, values: Mapping[str, Any]) -> None:
        super().validate(values)
        secret = values["SECRET_KEY"]
        if secret.lower() in _PLACEHOLDER_SECRETS or len(secret) < MIN_SECRET_LENGTH:
            raise ConfigError(
                f"SECRET_KEY is too weak: use at least {MIN_SECRET_LENGTH} random characters "
                '(python -c "import secrets; print(secrets.token_urlsafe(48))")'
            )


class DevelopmentConfig(Config):
    """Opted into for `make run`: plain http on localhost, no proxy in front."""

    ENV_NAME = "development"
    DEBUG = False  # the reloader would fork under gunicorn; debug pages stay off
    SESSION_COOKIE_SECURE = False
    DEFAULTS = {
        "SECRET_KEY": "development-only-secret-key-not-for-production",
        # The Redis `make run` starts (devtools.run), not a system Redis on 6379.
        "REDIS_URL": "redis://127.0.0.1:6390/0",
        "FORCE_HTTPS": False,
    }


class TestingConfig(Config):
    """For the suite: no pacing delay, no https redirect; Redis comes from the fixture."""

    ENV_NAME = "testing"
    TESTING = True
    SESSION_COOKIE_SECURE = False
    REQUIRED = ("REDIS_URL",)
    DEFAULTS = {
        "SECRET_KEY": "testing-secret-key-that-is-long-enough-0123456789",
        "FORCE_HTTPS": False,
        "AGENT_BUILTIN_DELAY_MS": 0,
        "ACCESS_LOG_FLUSH_MS": 0,  # tests read log lines right after each request
    }


CONFIGS: dict[str, type[Config]] = {
    "production": ProductionConfig,
    "development": DevelopmentConfig,
    "testing": TestingConfig,
}


def load_config(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Pick the config class from FLASK_ENV (production by default) and parse the environment."""
    env = os.environ if environ is None else environ
    name = (env.get("FLASK_ENV") or "production").strip().lower()
    if name not in CONFIGS:
        raise ConfigError(f"FLASK_ENV must be one of {', '.join(CONFIGS)}, got {name!r}")
    return CONFIGS[name].from_env(env)
