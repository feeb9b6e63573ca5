"""Console pages of usage: one key's page with its last 30 days as inline SVG, and the keys
table's filter, search and pagination (server-side, query parameters).

The chart is drawn on the server: plain SVG elements with attributes only (no script, no
style attribute), so it needs nothing from a CDN and passes the nonce CSP.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flask import request

from auth import require_scope
from auth.scopes import ADMIN
from core.extensions import get_redis
from gateway.admin.console import actions
from gateway.admin.console.views import _key_or_404, _page, bp
from gateway.openapi import hide_from_schema
from gateway.usage import store

CHART_DAYS = 30
PAGE_SIZE = 50
EXPIRING_SECONDS = 7 * 24 * 3600  # "expiring": active and expires within 7 days
FILTERS = ("all", "active", "revoked", "expiring")
WIDTH, HEIGHT, PAD = 600, 140, 24


@dataclass(frozen=True)
class Bar:
    x: float
    y: float
    width: float
    height: float
    date: str
    value: int


def bars(values: Sequence[int], dates: Sequence[str]) -> list[Bar]:
    """One bar per day, scaled to the tallest (an all-zero series draws flat)."""
    top = max(values, default=0) or 1
    step = (WIDTH - 2 * PAD) / max(1, len(values))
    out = []
    for n, (value, day) in enumerate(zip(values, dates, strict=True)):
        height = (HEIGHT - 2 * PAD) * value / top
        out.append(Bar(round(PAD + n * step, 1), round(HEIGHT - PAD - height, 1),
                       round(step * 0.8, 1), round(height, 1), day, value))  # fmt: skip
    return out


def _ts(value: Any) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(str(value).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def matches(key: Mapping[str, Any], status: str, search: str, now: float) -> bool:
    if status == "active" and key.get("status") != "active":
        return False
    if status == "revoked" and key.get("status") != "revoked":
        return False
    if status == "expiring":
        expires = _ts(key.get("expires_at"))
        if key.get("status") != "active" or expires is None or expires - now > EXPIRING_SECONDS:
            return False
    if search:
        haystack = " ".join(str(key.get(f) or "") for f in ("name", "id", "prefix")).lower()
        return search.lower() in haystack
    return True


def keys_listing(args: Mapping[str, str]) -> dict[str, Any]:
    """The keys table's rows for ``?status=&q=&page=`` and the paging figures."""
    status = args.get("status", "all")
    status = status if status in FILTERS else "all"
    search = args.get("q", "").strip()[:200]
    try:
        page = max(1, int(args.get("page", "1")))
    except ValueError:
        page = 1
    now = time.time()
    found = [k for k in actions.list_keys() if matches(k, status, search, now)]
    pages = max(1, -(-len(found) // PAGE_SIZE))
    page = min(page, pages)
    rows = found[(page - 1) * PAGE_SIZE : page * PAGE_SIZE]
    return {"keys": rows, "status": status, "q": search, "page": page, "pages": pages,
            "matched": len(found), "filters": FILTERS}  # fmt: skip


@bp.get("/console/keys/<key_id>")
@require_scope(ADMIN)
@hide_from_schema
def key_page(key_id: str) -> tuple[str, int]:
    """A key's details and its requests and tokens per day, as server-drawn SVG."""
    key = _key_or_404(key_id)
    usage = store.read(get_redis(), f"api_key:{key_id}", CHART_DAYS)
    dates = [d["date"] for d in usage["days"]]
    charts = [
        {
            "name": name,
            "label": label,
            "total": usage["totals"][name],
            "bars": bars([d[name] for d in usage["days"]], dates),
        }
        for name, label in (("requests", "Requests"), ("tokens", "Tokens"))
    ]
    return _page("key_usage.html", key=key, usage=usage, charts=charts, width=WIDTH, height=HEIGHT,
                 pad=PAD, section="keys")  # fmt: skip


@bp.app_template_global()
def console_keys_listing() -> dict[str, Any]:
    """The keys page's filtered page of rows (its template calls this)."""
    return keys_listing(request.args)
