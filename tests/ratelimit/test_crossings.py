"""The per-process table of quota windows stays bounded without a scan on every request."""

from __future__ import annotations

import time

import pytest

from gateway.ratelimit import crossings


def test_a_table_of_live_windows_is_emptied_not_rescanned(monkeypatch: pytest.MonkeyPatch) -> None:
    # Many tenants with day quotas: nothing expires, so dropping the expired ones frees nothing.
    now = time.time()
    table = {f"gw:rl:{{k:{n}}}:quota": (now + 86_400, 1) for n in range(9)}
    monkeypatch.setattr(crossings, "_seen", table)
    monkeypatch.setattr(crossings, "_MAX_WINDOWS", 8)
    crossings._prune(now)
    assert table == {}  # the next request starts afresh instead of scanning 9 live entries again


def test_expired_windows_go_first(monkeypatch: pytest.MonkeyPatch) -> None:
    now = time.time()
    table = {"old": (now - 1, 5), "live": (now + 60, 3)}
    monkeypatch.setattr(crossings, "_seen", table)
    monkeypatch.setattr(crossings, "_MAX_WINDOWS", 8)
    crossings._prune(now)
    assert table == {"live": (now + 60, 3)}
