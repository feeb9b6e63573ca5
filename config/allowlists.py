"""The two allow-lists of who the gateway answers: browser origins (CORS_ORIGINS) and hosts (ALLOWED_HOSTS).

Both the parse (at start-up, ConfigError naming the variable) and the one matcher live here,
in ``config/``, so the CORS layer (gateway/security.py) and the cookie-write Origin check
(auth/origin.py) import the same code without an upward import.

Origins: an exact ``scheme://host[:port]`` is kept as a lowercase string; the one wildcard
form, ``https://*.example.com``, becomes an anchored, case-insensitive ``re.Pattern`` that
admits one or more DNS labels in front of ``example.com``, over https, on the default port.
Flask-CORS compiles any string holding regex characters into an *unanchored* regex, so no
such string may ever reach it: everything else that looks like a pattern is refused.

Hosts: ``api.example.com`` (any port), ``api.example.com:8443`` (that port only) or
``.example.com`` (the domain and every subdomain, as in Werkzeug and Django).
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from werkzeug.sansio.utils import host_is_trusted

from config.parsers import ConfigError

Origin = str | re.Pattern[str]

_LABEL = r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"
_NAME = rf"{_LABEL}(?:\.{_LABEL})*"
_IPV6 = r"\[[0-9a-f:.]+\]"
_PORT = r"[1-9][0-9]{0,4}"
_EXACT_ORIGIN = re.compile(rf"(?P<scheme>https?)://(?:{_NAME}|{_IPV6})(?::(?P<port>{_PORT}))?", re.I)
# At least two labels after "*.": "https://*.com" would admit every .com site.
_WILDCARD_ORIGIN = re.compile(rf"https://\*\.(?P<domain>{_LABEL}(?:\.{_LABEL})+)", re.I)
_HOST = re.compile(rf"(?P<dot>\.)?(?P<name>{_NAME}|{_IPV6})(?::(?P<port>{_PORT}))?", re.I)
_DEFAULT_PORTS = {"http": 80, "https": 443}


def _valid_port(port: str | None) -> bool:
    return port is None or int(port) <= 65535


def _wildcard_pattern(domain: str) -> re.Pattern[str]:
    # \A and \Z, not ^ and $: "$" also matches before a trailing newline. re.match (what
    # Flask-CORS calls) anchors the start only, so the end anchor is what stops suffixes.
    return re.compile(rf"\Ahttps://(?:{_LABEL}\.)+{re.escape(domain.lower())}\Z", re.IGNORECASE)


def _parse_origin(name: str, entry: str) -> Origin:
    wildcard = _WILDCARD_ORIGIN.fullmatch(entry)
    if wildcard:
        return _wildcard_pattern(wildcard["domain"])
    exact = _EXACT_ORIGIN.fullmatch(entry)
    if exact and _valid_port(exact["port"]):
        return entry.lower()
    raise ConfigError(
        f"{name} entries must be origins like https://app.example.com or https://*.example.com "
        f"(scheme://host[:port], no path, no trailing slash, no other pattern), got {entry!r}"
    )


def parse_origins(name: str, raw: str) -> tuple[Origin, ...]:
    """A comma-separated allow-list of origins; '*' is refused because it cannot carry credentials."""
    return tuple(_parse_origin(name, entry.strip()) for entry in raw.split(",") if entry.strip())


def origin_allowed(origin: str, allowed: Iterable[Origin]) -> bool:
    """Whether ``origin`` (an Origin header) is on the list, the way Flask-CORS decides it too."""
    for entry in allowed:
        if isinstance(entry, re.Pattern):
            if entry.match(origin):
                return True
        elif origin.casefold() == entry.casefold():
            return True
    return False


def _parse_host(name: str, entry: str) -> str:
    host = _HOST.fullmatch(entry)
    if host is None or not _valid_port(host["port"]):
        raise ConfigError(
            f"{name} entries must be host names like api.example.com, .example.com (it and every "
            f"subdomain) or api.example.com:8443, got {entry!r}"
        )
    return entry.lower()


def parse_hosts(name: str, raw: str) -> tuple[str, ...]:
    """A comma-separated list of Host values; empty means any host."""
    return tuple(_parse_host(name, entry.strip()) for entry in raw.split(",") if entry.strip())


def _split_port(host: str) -> tuple[str, int | None]:
    name, colon, port = host.rpartition(":")
    if colon and "]" not in port:  # "[::1]" has colons but no port
        return name, int(port)
    return host, None


def _name_matches(name: str, entry: str) -> bool:
    if entry.startswith("."):
        return name == entry[1:] or name.endswith(entry)
    return name == entry


def host_allowed(host: str, scheme: str, allowed: Iterable[str]) -> bool:
    """Whether the request's ``host`` (``request.host``) is served; well-formed is needed even for any."""
    allowed = tuple(allowed)
    # Werkzeug's check of the characters and the port range: empty or malformed is never served.
    if not host_is_trusted(host):
        return False
    if not allowed:
        return True
    name, port = _split_port(host.lower())
    effective = port if port is not None else _DEFAULT_PORTS.get(scheme)
    for entry in allowed:
        entry_name, entry_port = _split_port(entry)
        if _name_matches(name, entry_name) and entry_port in (None, effective):
            return True
    return False
