"""The console in a real browser: headless Debian Chromium against a live gunicorn.

An admin made with the CLI logs in, creates a key, sees its secret once, the key
works against the API, the admin revokes it and the API refuses it within a
second. Screenshots of every page land in test-output/screenshots/.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from playwright import sync_api

from devtools.gunicorn import ROOT, GunicornServer
from tests.admin.console.conftest import ADMIN_EMAIL, ADMIN_PASSWORD

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
SCREENSHOTS = ROOT / "test-output" / "screenshots"
# Generous limits: the browser loads pages and assets quickly; these tests are not about limits.
SERVER_ENV = {"RATELIMIT_DEFAULT": "1000/minute", "RATELIMIT_ANONYMOUS": "1000/minute"}


@pytest.fixture
def browser() -> Iterator[object]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


@pytest.fixture
def live(gunicorn: Callable[..., GunicornServer], test_env: dict[str, str]) -> GunicornServer:
    """A gunicorn with two workers and an admin user created through the CLI."""
    server = gunicorn(workers=2, env=SERVER_ENV)
    created = subprocess.run(
        [sys.executable, "-m", "flask", "--app", "wsgi", "users", "create", ADMIN_EMAIL, "--password-stdin"],
        input=ADMIN_PASSWORD + "\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **test_env},
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    return server


def _shot(page: object, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)  # type: ignore[attr-defined]


def _me(server: GunicornServer, secret: str) -> int:
    headers = {"Authorization": f"Bearer {secret}"}
    return requests.get(f"{server.url}/auth/me", headers=headers, timeout=5).status_code


def _status_within(server: GunicornServer, secret: str, status: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        # Several requests per round so both workers are asked.
        if all(_me(server, secret) == status for _ in range(4)):
            return True
        time.sleep(0.05)
    return False


def test_admin_creates_uses_and_revokes_a_key(live: GunicornServer, browser: object) -> None:
    context = browser.new_context(base_url=live.url)  # type: ignore[attr-defined]
    context.grant_permissions(["clipboard-read", "clipboard-write"], origin=live.url)
    page = context.new_page()
    csp_errors: list[str] = []
    page.on(
        "console", lambda msg: csp_errors.append(msg.text) if "Content Security Policy" in msg.text else None
    )

    page.goto("/admin/")
    assert page.url.endswith("/admin/login")
    assert page.evaluate("getComputedStyle(document.documentElement).backgroundColor") == "rgb(245, 246, 248)"
    _shot(page, "01-login")
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/")
    assert page.locator("#keys").is_visible()
    _shot(page, "02-keys-empty")

    page.click("text=Create a key")
    page.fill("#name", "browser test key")
    page.check("input[value='agents:read']")
    page.check("input[value='jobs:read']")
    page.fill("#rate_limit", "100/minute")
    page.fill("#expires_in_days", "30")
    _shot(page, "03-new-key")
    page.click("#create")
    secret = page.locator("#secret").inner_text().strip()
    assert secret.startswith("rgw_")
    page.click("#copy")
    page.wait_for_function("document.getElementById('copy').textContent === 'Copied'")
    assert page.evaluate("navigator.clipboard.readText()") == secret
    _shot(page, "04-secret-once")

    assert _me(live, secret) == 200
    page.reload()
    assert page.locator("#secret").count() == 0
    assert secret not in page.content()

    page.goto("/admin/")
    row = page.locator("tr", has_text="browser test key")
    assert "active" in row.inner_text() and f"{secret[:8]}…{secret[-4:]}" in row.inner_text()
    _shot(page, "05-keys")
    row.locator("text=Revoke").click()
    assert page.locator("h1", has_text="Revoke this key?").is_visible()
    _shot(page, "06-confirm-revoke")
    page.click("#confirm")
    page.wait_for_url("**/admin/")
    assert "revoked" in page.locator("tr", has_text="browser test key").inner_text()
    _shot(page, "07-keys-revoked")
    assert _status_within(live, secret, 401, seconds=1.5), "revoked key still accepted"

    page.click("text=Audit log")
    assert page.locator("#audit", has_text="key.revoke").is_visible()
    _shot(page, "08-audit")
    page.click("text=Users")
    row = page.locator("#users tr", has_text=ADMIN_EMAIL)
    assert "enabled" in row.inner_text() and "(you)" in row.inner_text()
    _shot(page, "09-users")
    page.click("#logout")
    page.wait_for_url("**/admin/login")
    page.goto("/admin/")
    assert page.url.endswith("/admin/login")
    assert csp_errors == []
    context.close()
