"""WSGI entry point: ``gunicorn -c gunicorn.conf.py wsgi:app`` and ``flask --app wsgi``."""

from __future__ import annotations

from gateway import create_app

app = create_app()
