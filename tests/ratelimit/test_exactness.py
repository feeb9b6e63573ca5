"""For a limit of N, exactly N requests succeed under concurrent load, across workers and instances."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from devtools.gunicorn import GunicornServer

# Both ways: through gateway.fastpath.redis, and through redis-py's public register_script.
pytestmark = [pytest.mark.gunicorn, pytest.mark.parametrize("fastpath", ["true", "false"])]

LIMIT = 25
REQUESTS = 80
CLIENTS = 16


def hammer(urls: list[str], headers: dict[str, str]) -> Counter[int]:
    """REQUESTS requests from CLIENTS threads, spread round-robin over ``urls``."""

    def one(n: int) -> int:
        with requests.Session() as session:
            return session.get(urls[n % len(urls)], headers=headers, timeout=10).status_code

    with ThreadPoolExecutor(CLIENTS) as pool:
        return Counter(pool.map(one, range(REQUESTS)))


def test_exact_across_four_workers(gunicorn: Callable[..., GunicornServer], fastpath: str) -> None:
    server = gunicorn(workers=4, env={"RATELIMIT_ANONYMOUS": f"{LIMIT}/minute", "GATEWAY_FASTPATH": fastpath})
    assert len(server.worker_pids()) == 4
    statuses = hammer([server.url + "/"], {})
    assert statuses == Counter({200: LIMIT, 429: REQUESTS - LIMIT})


def test_exact_across_two_instances_for_a_key(
    gunicorn: Callable[..., GunicornServer], make_key: Callable[..., str], fastpath: str
) -> None:
    first = gunicorn(workers=2, env={"GATEWAY_FASTPATH": fastpath})
    second = gunicorn(workers=2, env={"GATEWAY_FASTPATH": fastpath})
    headers = {"Authorization": f"Bearer {make_key(rate_limit=f'{LIMIT}/minute')}"}
    statuses = hammer([first.url + "/auth/me", second.url + "/auth/me"], headers)
    assert statuses == Counter({200: LIMIT, 429: REQUESTS - LIMIT})
