"""Parsers for environment values: each takes (variable name, raw text) and
returns the value or raises ConfigError with one line naming the variable."""

from __future__ import annotations

from collections.abc import Callable
from urllib.parse import urlsplit

from limits import parse_many


class ConfigError(ValueError):
    """A setting is missing or malformed; the message is one line naming the variable."""


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def parse_str(name: str, raw: str) -> str:
    return raw


def parse_bool(name: str, raw: str) -> bool:
    value = raw.lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise ConfigError(f"{name} must be true or false, got {raw!r}")


def parse_int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be an integer, got {raw!r}") from None


def parse_float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None


def parse_limits(name: str, raw: str) -> str:
    """A Flask-Limiter limit string such as ``100/minute`` or ``10/second;1000/day``."""
    try:
        if parse_many(raw):
            return raw
    except ValueError:
        pass
    raise ConfigError(f"{name} must be a rate limit such as '100/minute', got {raw!r}")


def parse_limit(name: str, raw: str) -> str:
    """Exactly one limit: the default and anonymous limits are single windows."""
    value = parse_limits(name, raw)
    if len(parse_many(value)) != 1:
        raise ConfigError(f"{name} must be a single rate limit such as '100/minute', got {raw!r}")
    return value


def parse_route_limits(name: str, raw: str) -> dict[str, str]:
    """``endpoint=limits`` entries separated by commas, e.g. ``events.create=10/minute;500/day``:
    the per-route limits an operator adds on top of each identity's own (gateway/ratelimit)."""
    routes: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in raw.split(","))):
        endpoint, sep, limits = (piece.strip() for piece in entry.partition("="))
        if not sep or not endpoint or not limits:
            raise ConfigError(f"{name} entries must read endpoint=limits, got {entry!r}")
        routes[endpoint] = parse_limits(f"{name} ({endpoint})", limits)
    return routes


def parse_http_url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"{name} must be an http:// or https:// URL")
    return raw.rstrip("/")


def parse_url_or_path(name: str, raw: str) -> str:
    """An absolute http(s) URL or a path on this gateway (redirect targets)."""
    if raw.startswith("/") and not raw.startswith("//"):
        return raw
    return parse_http_url(name, raw)


def parse_choice(*choices: str) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        if raw not in choices:
            raise ConfigError(f"{name} must be one of {', '.join(choices)}, got {raw!r}")
        return raw

    return parse
