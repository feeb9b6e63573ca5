"""docs/eventsource-example.html in a real browser: a web app on its own origin streams a
reply through EventSource with a stream ticket, and the key never appears in a URL.

The page is served by the test's own static server (another port: another origin), the way
a user's web app would call the gateway, so the gateway's CORS_ORIGINS allow-list is part
of what is tested (the ticket's POST is preflighted, the EventSource is a CORS request).
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests
from playwright import sync_api

from devtools.gunicorn import ROOT, GunicornServer

pytestmark = [pytest.mark.browser, pytest.mark.gunicorn]

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--no-first-run"]
PAGE = "eventsource-example.html"
FLASK_CLI = [sys.executable, "-m", "flask", "--app", "wsgi"]
SCOPES = ["--scope", "agents:write", "--scope", "agents:read"]


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def site() -> Iterator[str]:
    """docs/ served on a free port of 127.0.0.1: the web app's origin."""
    handler = functools.partial(_QuietHandler, directory=str(ROOT / "docs"))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def browser() -> Iterator[sync_api.Browser]:
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (.ci/run does it)")
    with sync_api.sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        yield launched
        launched.close()


def _create_key(test_env: dict[str, str]) -> str:
    created = subprocess.run(
        [*FLASK_CLI, "keys", "create", "--name", "web", *SCOPES, "--json"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, **test_env},
        timeout=60,
    )
    assert created.returncode == 0, created.stderr
    return str(json.loads(created.stdout)["key"])


def test_the_example_page_streams_a_reply_with_a_ticket(
    gunicorn: Callable[..., GunicornServer],
    test_env: dict[str, str],
    site: str,
    browser: sync_api.Browser,
) -> None:
    server = gunicorn(workers=2, env={"CORS_ORIGINS": site, "AGENT_BUILTIN_DELAY_MS": "5"})
    secret = _create_key(test_env)
    page = browser.new_page()
    urls: list[str] = []
    page.on("request", lambda request: urls.append(request.url))
    page.goto(f"{site}/{PAGE}")
    page.fill("#gateway", server.url)
    page.fill("#key", secret)
    page.fill("#message", "Does the ticket work?")
    page.click("#send")
    sync_api.expect(page.locator("#status")).to_have_text("done", timeout=20_000)
    reply = page.locator("#reply").inner_text()
    assert "Does the ticket work?" in reply  # the built-in agent quotes the message
    # The stream was opened with a ticket, and no URL the page asked for holds the key.
    [stream_url] = [url for url in urls if "/agents/stream?" in url]
    assert "ticket=gwt_" in stream_url
    assert not any(secret in url for url in urls)
    # The reply was stored as the key's own (the stream ran as the key), and the ticket is spent.
    headers = {"Authorization": f"Bearer {secret}"}
    [session] = requests.get(f"{server.url}/agents/sessions", headers=headers, timeout=5).json()["sessions"]
    messages = requests.get(
        f"{server.url}/agents/session/{session['session_id']}/messages", headers=headers, timeout=5
    ).json()["messages"]
    assert [m["role"] for m in messages] == ["user", "assistant"] and messages[1]["content"] == reply
    again = requests.get(stream_url, timeout=5)
    assert again.status_code == 401 and "invalid_token" in again.headers["WWW-Authenticate"]
    page.close()
