"""gunicorn settings: ``gunicorn -c gunicorn.conf.py wsgi:app`` (Docker CMD, render.yaml).

Worker class: gevent. A sync worker holds one request at a time, so each open
/agents/stream (SSE) would pin a whole worker and health probes would queue
behind streams. gevent serves each connection on a greenlet: thousands of
mostly idle streams cost a few KB each and /healthz stays fast. gevent's
worker also notifies the arbiter from its own greenlet, so a long, quiet stream
is not killed by the worker timeout. Redis and HTTP clients are made
cooperative by gevent's monkey-patching, done by the worker before it loads the
app (hence no ``preload_app``: the app must be imported after the patching).

Shutdown: SIGTERM (Docker stop, a Render deploy) is graceful: workers stop
accepting, finish in-flight requests for up to GUNICORN_GRACEFUL_TIMEOUT seconds,
then are killed. Open streams get a quarter of that (at most 5 s) to finish, then
end with ``event: error`` ``server_restarting`` and a ``retry:`` hint, so that
clients reconnect to a live worker instead of being cut (post_worker_init below).
SIGINT/SIGQUIT stop at once.

Every value comes from the environment through config.SETTINGS, so a bad one is
refused here, in the master, with one line, instead of crash-looping workers.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from config import ConfigError, load_config

try:
    _settings = load_config()
except ConfigError as exc:
    sys.stderr.write(f"gateway: configuration error: {exc}\n")
    sys.exit(1)

proc_name = "royal-gateway"
# HOST defaults to all interfaces: the container's port is what Render and Docker publish.
bind = f"{_settings['HOST']}:{_settings['PORT']}"
workers = _settings["WEB_CONCURRENCY"]
worker_class = "gevent"
# Open connections (greenlets) per worker; SSE streams count here until they end.
worker_connections = _settings["WORKER_CONNECTIONS"]
timeout = _settings["GUNICORN_TIMEOUT"]  # a worker silent this long is restarted
graceful_timeout = _settings["GUNICORN_GRACEFUL_TIMEOUT"]
keepalive = _settings["GUNICORN_KEEPALIVE"]  # a little over typical proxy idle timeouts
# ProxyFix in the app is the one place that decides which X-Forwarded-* headers to believe.
forwarded_allow_ips = ""
# gunicorn >= 25.1 opens a control socket at one fixed path per user: several instances
# (the test suite, two checkouts) would replace each other's. Nothing here uses gunicornc.
control_socket_disable = True
accesslog = None  # the app writes structured access lines itself
errorlog = "-"
loglevel = _settings["GUNICORN_LOG_LEVEL"]
# Bound a worker's life (0 = never) so slow leaks in dependencies cannot accumulate forever.
max_requests = _settings["GUNICORN_MAX_REQUESTS"]
max_requests_jitter = max_requests // 10
# Workers' heartbeat files on tmpfs: a container's overlay disk can stall them into timeouts.
_SHM = "/dev/shm"  # noqa: S108 - heartbeat files only, no data
if os.path.isdir(_SHM):
    worker_tmp_dir = _SHM


def post_worker_init(worker: Any) -> None:
    """Streams watch the worker: once it stops (SIGTERM, max_requests, a lost master) they
    end resumably, well inside graceful_timeout, instead of being killed mid-frame."""
    from gateway.agents.streaming import watch_shutdown  # the app is loaded by now

    watch_shutdown(lambda: not worker.alive, grace_seconds=min(5.0, graceful_timeout / 4))
