"""What a Redis URL names: one server, a Sentinel-watched primary, or a cluster.

The syntax is the ``limits`` library's (``limits._storage_scheme.parse_storage_uri``), so one
URL works for both: ``redis+sentinel://[:password@]host:port[,host:port...]/<master>[/db]`` and
``redis+cluster://[:password@]host:port[,host:port...]``. ``valkey`` stands for ``redis`` in
every scheme (the servers speak one protocol; redis-py drives both), and a doubled ``s``
(``rediss``, ``valkeys``) means TLS. Parsed in this one place; a malformed URL raises
:class:`ConfigError` with one line naming the variable.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Literal
from urllib.parse import unquote, urlsplit

from config.parsers import ConfigError

Topology = Literal["standalone", "sentinel", "cluster"]
STANDALONE: Topology = "standalone"
SENTINEL: Topology = "sentinel"
CLUSTER: Topology = "cluster"

_BASES = {"redis": False, "rediss": True, "valkey": False, "valkeys": True}
_TOPOLOGIES: dict[str, Topology] = {"": STANDALONE, "sentinel": SENTINEL, "cluster": CLUSTER}
SCHEMES_HELP = "redis://, rediss://, unix://, redis+sentinel://, redis+cluster:// (or valkey...)"


@dataclass(frozen=True)
class RedisTarget:
    """A parsed Redis URL. ``url`` is the standalone URL redis-py's ``from_url`` takes
    (``valkey`` spelled ``redis``); for sentinel and cluster, ``hosts`` are the seeds."""

    topology: Topology
    url: str
    hosts: tuple[tuple[str, int], ...] = ()
    master: str = ""
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


@functools.lru_cache(maxsize=32)
def parse_redis_target(name: str, raw: str) -> RedisTarget:
    """The target ``raw`` names; ConfigError (one line naming ``name``) when it is malformed."""
    scheme, sep, _ = raw.partition("://")
    if not sep:
        raise ConfigError(f"{name} must be a URL starting with {SCHEMES_HELP}")
    base, _, kind = scheme.lower().partition("+")
    if scheme.lower() == "unix":
        return RedisTarget(STANDALONE, raw)
    if base not in _BASES or kind not in _TOPOLOGIES:
        raise ConfigError(f"{name} must start with {SCHEMES_HELP}, got scheme {scheme!r}")
    tls, topology = _BASES[base], _TOPOLOGIES[kind]
    if topology == STANDALONE:
        return _standalone(name, raw, tls)
    return _seeded(name, raw, topology, tls)


def parse_redis_url(name: str, raw: str) -> str:
    """A Redis URL of any accepted form, kept as given (the settings table's parser)."""
    parse_redis_target(name, raw)
    return raw


def _standalone(name: str, raw: str, tls: bool) -> RedisTarget:
    url = ("rediss" if tls else "redis") + raw[raw.index("://") :]
    parts = urlsplit(url)
    if not parts.hostname:
        raise ConfigError(f"{name} must name a host, such as redis://localhost:6379/0")
    try:
        port = parts.port or 6379
    except ValueError:
        raise ConfigError(f"{name} has a malformed port") from None
    db = _db(name, parts.path.strip("/") or "0")
    return RedisTarget(
        STANDALONE, url, ((parts.hostname, port),), "", db, parts.username, parts.password, tls
    )


def _seeded(name: str, raw: str, topology: Topology, tls: bool) -> RedisTarget:
    rest = raw.split("://", 1)[1]
    netloc, _, path = rest.partition("/")
    auth, at, locations = netloc.rpartition("@")
    username, password = _credentials(auth) if at else (None, None)
    hosts = tuple(_location(name, loc) for loc in locations.split(","))
    segments = [s for s in path.split("?", 1)[0].split("/") if s]
    if topology == CLUSTER:
        if segments:
            raise ConfigError(f"{name}: a cluster URL takes no path (a cluster has one database)")
        return RedisTarget(CLUSTER, raw, hosts, "", 0, username, password, tls)
    if not segments or len(segments) > 2:
        raise ConfigError(
            f"{name} must name the master: redis+sentinel://host:port[,host:port]/<master>[/db]"
        )
    db = _db(name, segments[1]) if len(segments) == 2 else 0
    return RedisTarget(SENTINEL, raw, hosts, unquote(segments[0]), db, username, password, tls)


def _credentials(auth: str) -> tuple[str | None, str | None]:
    user, colon, password = auth.partition(":")
    if not colon:  # limits and redis-py read a lone word as the password
        return None, unquote(user) or None
    return unquote(user) or None, unquote(password) or None


def _location(name: str, loc: str) -> tuple[str, int]:
    parts = urlsplit(f"//{loc.strip()}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if not parts.hostname or port is None:
        raise ConfigError(f"{name}: every host needs host:port, got {loc.strip()!r}")
    return parts.hostname, port


def _db(name: str, raw: str) -> int:
    if not raw.isdigit():
        raise ConfigError(f"{name}: the database must be a number, got {raw!r}")
    return int(raw)
