"""The console's usage pages in a real browser against gunicorn (two workers): filter,
search and page the keys table, open a key and see its chart. Screenshots land in
test-output/screenshots/ (usage-*.png)."""

from __future__ import annotations

import time

import pytest
import redis
import requests
from flask import Flask

from auth import keys
from auth.loaders import pepper
from devtools.gunicorn import GunicornServer
from gateway import create_app
from tests.admin.console.conftest import ADMIN_EMAIL, ADMIN_PASSWORD
from tests.admin.console.test_browser import _shot, browser, live  # noqa: F401  # fixtures

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]


def _own_requests(server: GunicornServer, secret: str) -> int:
    answer = requests.get(
        f"{server.url}/auth/usage?days=1", headers={"Authorization": f"Bearer {secret}"}, timeout=5
    )
    return int(answer.json()["days"][-1]["requests"])


def test_usage_chart_filters_search_and_pages(
    live: GunicornServer,  # noqa: F811
    browser: object,  # noqa: F811
    test_env: dict[str, str],
    r: redis.Redis,
) -> None:
    app: Flask = create_app(test_env)
    for n in range(55):
        keys.create_key(r, pepper=pepper(app), name=f"bulk-{n:02}", scopes=["events:read"])
    keys.create_key(r, pepper=pepper(app), name="expiring-soon", scopes=["events:read"], expires_in_days=2)
    record, secret = keys.create_key(r, pepper=pepper(app), name="charted", scopes=["events:read"])
    for _ in range(12):  # spread over both workers; each flushes within about a second
        assert requests.get(
            f"{live.url}/auth/me", headers={"Authorization": f"Bearer {secret}"}, timeout=5
        ).ok
    deadline = time.monotonic() + 10
    while _own_requests(live, secret) < 13 and time.monotonic() < deadline:
        time.sleep(0.3)
    assert _own_requests(live, secret) >= 13  # every worker's counts reached Redis

    page = browser.new_context(base_url=live.url).new_page()  # type: ignore[attr-defined]
    csp_errors: list[str] = []
    page.on("console", lambda m: csp_errors.append(m.text) if "Content Security Policy" in m.text else None)
    page.goto("/admin/login")
    page.fill("#email", ADMIN_EMAIL)
    page.fill("#password", ADMIN_PASSWORD)
    page.click("button[type=submit]")
    page.wait_for_url("**/admin/")
    assert page.locator("#keys tbody tr[data-key-id]").count() == 50
    _shot(page, "usage-01-keys-page-1")
    page.click("a[rel=next]")
    assert page.locator("#keys tbody tr[data-key-id]").count() == 7
    _shot(page, "usage-02-keys-page-2")
    page.select_option("select[name=status]", "expiring")
    page.click("form.keys-filter button[type=submit]")
    assert page.locator("#keys tbody tr[data-key-id]").count() == 1
    assert "expiring-soon" in page.locator("#keys tbody").inner_text()
    _shot(page, "usage-03-expiring")
    page.select_option("select[name=status]", "all")
    page.fill("input[name=q]", "chart")
    page.click("form.keys-filter button[type=submit]")
    assert page.locator("#keys tbody tr[data-key-id]").count() == 1
    _shot(page, "usage-04-search")
    page.click("text=charted")
    page.wait_for_url(f"**/admin/console/keys/{record['id']}")
    assert page.locator("#chart-requests svg rect.bar").count() == 30
    assert page.locator("#chart-tokens svg rect.bar").count() == 30
    today_bar = page.locator("#chart-requests svg rect.bar").last
    assert int(today_bar.get_attribute("data-value") or 0) >= 13
    assert float(today_bar.get_attribute("height") or 0) > 0
    _shot(page, "usage-05-key-chart")
    assert csp_errors == []
