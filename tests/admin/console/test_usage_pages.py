"""Console: a key's page with its usage chart; the keys table's filter, search and pages."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

import redis
from flask import Flask

from auth import keys
from auth.loaders import pepper
from gateway.usage import store
from tests.admin.console.conftest import Console


def _make(app: Flask, r: redis.Redis, name: str, **fields: object) -> str:
    record, _ = keys.create_key(r, pepper=pepper(app), name=name, scopes=["events:read"], **fields)
    return str(record["id"])


def test_key_page_draws_30_days_as_inline_svg(app: Flask, r: redis.Redis, logged_in: Console) -> None:
    key_id = _make(app, r, "charted")
    today = datetime.now(UTC).date()
    r.hset(store.day_key(f"api_key:{key_id}", today.isoformat()), mapping={"requests": 10, "tokens": 400})
    r.hset(
        store.day_key(f"api_key:{key_id}", (today - timedelta(days=3)).isoformat()), mapping={"requests": 5}
    )
    page = logged_in.get(f"/admin/console/keys/{key_id}")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    for chart in ("chart-requests", "chart-tokens"):
        assert f'id="{chart}"' in html
    bars = re.findall(r'<rect class="bar"[^>]*data-date="([^"]+)" data-value="(\d+)"', html)
    assert len(bars) == 60
    assert bars[29] == (today.isoformat(), "10") and bars[26][1] == "5" and bars[59][1] == "400"
    tallest = re.search(rf'height="([\d.]+)"\s+fill="#2f6fdf" data-date="{today.isoformat()}"', html)
    assert tallest and float(tallest.group(1)) > 0
    assert "<script" not in html.split("</nav>", 1)[1].split("</main>", 1)[0]  # the chart needs no script
    assert logged_in.get("/admin/console/keys/key_missing").status_code == 404


def test_keys_table_filters_searches_and_pages(app: Flask, r: redis.Redis, logged_in: Console) -> None:
    ids = [_make(app, r, f"bulk-{n:03}") for n in range(120)]
    soon = _make(app, r, "soon-gone", expires_in_days=3)
    later = _make(app, r, "later", expires_in_days=60)
    keys.revoke_key(r, ids[0])

    def rows(query: str) -> list[str]:
        html = logged_in.get(f"/admin/?{query}").get_data(as_text=True)
        return re.findall(r'<tr data-key-id="([^"]+)"', html)

    first = rows("")
    assert len(first) == 50
    assert len(rows("page=3")) == 122 - 100
    assert set(rows("page=99")) == set(rows("page=3"))  # past the end: the last page
    assert rows("status=revoked") == [ids[0]]
    assert rows("status=expiring") == [soon]
    assert later in rows("status=active&q=later")
    assert rows("q=bulk-007") == [ids[7]]
    assert rows(f"q={ids[9]}") == [ids[9]]
    assert rows("q=nothing-like-this") == []
    assert "No key matches." in logged_in.get("/admin/?q=nothing-like-this").get_data(as_text=True)
