"""gunicorn settings: ``gunicorn -c gunicorn.conf.py wsgi:app`` (Docker CMD, render.yaml).

Worker class: gevent. A sync worker holds one request at a time, so each open
/agents/stream (SSE) would pin a whole worker and health probes would queue
behind streams. gevent serves each connection on a greenlet: thousands of
mostly idle streams cost a few KB each and /healthz stays fast. gevent's
worker also notifies the arbiter from its own greenlet, so a long, quiet stream
is not killed by the worker timeout. Redis and HTTP clients are made
cooperative by gevent's monkey-patching, done by the worker before it loads the app.
"""

from __future__ import annotations

import os
import sys

from config import ConfigError, load_config

# Refuse to start in the master, with one line, rather than crash-loop the workers.
try:
    _settings = load_config()
except ConfigError as exc:
    sys.stderr.write(f"gateway: configuration error: {exc}\n")
    sys.exit(1)

# All interfaces: the container's port is what Render and Docker publish.
bind = f"{os.environ.get('HOST', '0.0.0.0')}:{_settings['PORT']}"  # noqa: S104
workers = _settings["WEB_CONCURRENCY"]
worker_class = "gevent"
worker_connections = int(os.environ.get("WORKER_CONNECTIONS", "2000"))
timeout = 30  # a worker silent this long is restarted (gevent keeps heartbeating during streams)
graceful_timeout = 20  # open streams get this long to finish on deploy/restart
keepalive = 5  # a little over typical proxy idle timeouts (Render's is a few seconds)
# ProxyFix in the app is the one place that decides which X-Forwarded-* headers to believe.
forwarded_allow_ips = ""
accesslog = None  # the app writes structured access lines itself
errorlog = "-"
loglevel = os.environ.get("GUNICORN_LOG_LEVEL", "info")
# Bound a worker's life so slow leaks in dependencies cannot accumulate forever.
max_requests = int(os.environ.get("GUNICORN_MAX_REQUESTS", "0"))
max_requests_jitter = max_requests // 10
