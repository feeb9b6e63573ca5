"""Per-key token counters in Prometheus stay bounded: the top K keys plus "other"."""

from __future__ import annotations

import re
from collections.abc import Callable

import redis
from flask import Flask

from core import signals
from gateway import create_app
from gateway.usage import buffer


def test_only_the_top_keys_get_a_series(
    test_env: dict[str, str], r: redis.Redis, make_key: Callable[..., str]
) -> None:
    app: Flask = create_app({**test_env, "USAGE_PROMETHEUS_TOP_KEYS": "3"})
    for n in range(1, 31):  # key_01 .. key_30 with n tokens each
        signals.tokens_counted.send(
            app, key_id=f"key_{n:02}", owner=f"api_key:key_{n:02}", usage={"total_tokens": n}, estimated=False
        )
    buffer.flush_all()
    text = (
        app.test_client()
        .get("/metrics/prometheus", headers={"Authorization": f"Bearer {make_key()}"})
        .get_data(as_text=True)
    )
    series = dict(re.findall(r'^gateway_agent_tokens_total\{key="([^"]+)"\} (\S+)$', text, re.M))
    assert series == {
        "key_30": "30.0",
        "key_29": "29.0",
        "key_28": "28.0",
        "other": str(float(sum(range(1, 28)))),
    }
