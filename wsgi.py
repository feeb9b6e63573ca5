"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app`` and ``flask --app wsgi``."""

from __future__ import annotations

from config import ConfigError
from gateway import create_app

try:
    app = create_app()
except ConfigError as exc:
    # One clean line for `flask --app wsgi ...` and any other importer; no traceback.
    raise SystemExit(f"gateway: configuration error: {exc}") from None
