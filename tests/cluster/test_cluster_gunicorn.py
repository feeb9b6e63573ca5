"""Exact limits across two gunicorn instances of two workers each on a real Redis Cluster
(tests/test_sentinel.py does the same on a Sentinel set): instances share only Redis."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from devtools.gunicorn import GunicornServer
from devtools.redis_cluster import Cluster
from tests.support.instances import exact_on

pytestmark = [pytest.mark.topology, pytest.mark.gunicorn]


def test_exact_across_two_instances_on_a_cluster(
    redis_cluster: Cluster, gunicorn: Callable[..., GunicornServer], test_env: dict[str, str]
) -> None:
    # RQ's queue stays on the suite's standalone server (JOBS_REDIS_URL is required beside a cluster).
    exact_on(redis_cluster.url, {"JOBS_REDIS_URL": test_env["REDIS_URL"]}, gunicorn, test_env)
