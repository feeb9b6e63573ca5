"""A real Redis Cluster for the suite: 3 primaries and 3 replicas, ``redis-server
--cluster-enabled yes`` processes on free ports (each port's bus port, +10000, free too),
joined with ``redis-cli --cluster create`` (devtools.redis_cluster, which the bench uses
too), and the app built on a client of it."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from redis.cluster import RedisCluster

from core.redis import create_redis
from devtools.redis_cluster import Cluster
from gateway import create_app


@pytest.fixture(scope="module")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """A 3-primary, 3-replica Redis Cluster of the module's own, killed at its end."""
    if not (shutil.which("redis-server") and shutil.which("redis-cli")):
        pytest.skip("redis-server and redis-cli are needed on PATH to start a Redis Cluster")
    cluster = Cluster(tmp_path_factory.mktemp("cluster"))
    try:
        yield cluster.start()
    finally:
        cluster.stop()


@pytest.fixture
def rc(redis_cluster: Cluster) -> Iterator[RedisCluster]:
    """A client of the cluster, every primary flushed first."""
    client = create_redis(redis_cluster.url)
    assert isinstance(client, RedisCluster)
    client.flushall(target_nodes=RedisCluster.PRIMARIES)
    yield client
    client.close()


@pytest.fixture
def cluster_app(test_env: dict[str, str], redis_cluster: Cluster, rc: RedisCluster) -> Flask:
    """The app on the cluster's URL (RQ's jobs stay on the suite's standalone server)."""
    env: dict[str, Any] = {
        **test_env,
        "REDIS_URL": redis_cluster.url,
        "JOBS_REDIS_URL": test_env["REDIS_URL"],
    }
    return create_app({**env, "GATEWAY_FASTPATH": "false"})
