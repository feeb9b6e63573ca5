"""Fixtures for the admin console: an admin user and a logged-in test client."""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import redis
from flask.testing import FlaskClient

from auth import users

ADMIN_EMAIL = "admin@example.com"
ADMIN_PASSWORD = "correct horse battery staple"
ORIGIN = "http://localhost"
_CSRF = re.compile(r'name="csrf_token" value="([^"]+)"')
_FORM_ID = re.compile(r'name="form_id" value="([^"]+)"')


def csrf_of(html: str) -> str:
    match = _CSRF.search(html)
    assert match, "page has no CSRF field"
    return match.group(1)


def form_id_of(html: str) -> str:
    match = _FORM_ID.search(html)
    assert match, "page has no form id"
    return match.group(1)


@dataclass
class Console:
    """A browser-like client: posts carry the page's CSRF token and a same-site Origin."""

    client: FlaskClient

    def get(self, path: str):  # type: ignore[no-untyped-def]
        return self.client.get(path)

    def post(self, path: str, data: dict | None = None, *, csrf: str | None = None, **kw):  # type: ignore[no-untyped-def]
        form = dict(data or {})
        if csrf is not None:
            form["csrf_token"] = csrf
        return self.client.post(path, data=form, headers={"Origin": ORIGIN}, **kw)

    def submit(self, page_path: str, action: str, data: dict | None = None):  # type: ignore[no-untyped-def]
        """Load ``page_path`` and post its form (CSRF token and form id included) to ``action``."""
        html = self.get(page_path).get_data(as_text=True)
        form = dict(data or {})
        if 'name="form_id"' in html:
            form["form_id"] = form_id_of(html)
        return self.post(action, form, csrf=csrf_of(html))

    def log_in(self, email: str = ADMIN_EMAIL, password: str = ADMIN_PASSWORD):  # type: ignore[no-untyped-def]
        return self.submit("/admin/login", "/admin/login", {"email": email, "password": password})


@pytest.fixture
def admin_user(r: redis.Redis) -> dict:
    return users.create_user(r, email=ADMIN_EMAIL, password=ADMIN_PASSWORD)


@pytest.fixture
def console(client: FlaskClient) -> Console:
    return Console(client)


@pytest.fixture
def logged_in(console: Console, admin_user: dict) -> Console:
    response = console.log_in()
    assert response.status_code == 303, response.get_data(as_text=True)
    return console
