"""The gateway's framework shortcuts: every place it relies on a library's internals
for speed lives in this package, and nowhere else.

Each shortcut here:

* is on only while ``GATEWAY_FASTPATH`` is true (the default); with it false the
  gateway runs on the libraries' public APIs alone, with the same behaviour;
* says in its docstring what it saves per request, as measured (CPU instructions
  under ``valgrind --tool=cachegrind``, which the shared machine's load cannot skew);
* has a guard test in ``tests/fastpath/`` that fails loudly when the upstream
  internal it relies on changes shape, so an upgrade breaks a test, not production.

The shortcuts of the edge (``gateway.fastpath.responses``: the app and response
classes; ``gateway.fastpath.headers``: the security headers in one step) are
chosen by the factory and by ``gateway.security`` when the switch is on.

A module here may import the foundation (``core``) and the libraries; nothing
outside this package reaches into a library's private attributes (tests/test_layers.py).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from config.redis_url import STANDALONE, parse_redis_target

SWITCH = "GATEWAY_FASTPATH"


def enabled(config: Mapping[str, Any]) -> bool:
    """True when the shortcuts may be used (``GATEWAY_FASTPATH``, on by default)."""
    return bool(config.get(SWITCH, True))


def redis_enabled(config: Mapping[str, Any]) -> bool:
    """True when the Redis shortcut (gateway.fastpath.redis) may be used: the switch, and a
    standalone Redis. It drives raw connections of the app client's pool by hand, which a
    cluster client has none of, and which on Sentinel would bypass the pinning and failover
    handling that redis-py's client calls go through. The other shortcuts do not touch Redis."""
    if not enabled(config):
        return False
    url = config.get("REDIS_URL")
    return not url or parse_redis_target("REDIS_URL", url).topology == STANDALONE
