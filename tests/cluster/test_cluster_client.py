"""A cluster URL builds a working client against a real cluster, and /readyz reports its
primaries. The app's behaviour on a cluster: test_cluster.py beside this file."""

from __future__ import annotations

import pytest
from redis.cluster import RedisCluster

from core.redis import create_redis, primaries
from devtools.redis_cluster import Cluster
from gateway import create_app

pytestmark = pytest.mark.topology


def test_a_cluster_url_builds_a_working_client(redis_cluster: Cluster) -> None:
    cluster = redis_cluster
    client = create_redis(cluster.url, socket_timeout=0.5, connect_timeout=0.5)
    assert isinstance(client, RedisCluster)
    for n in range(50):  # keys on every node: MOVED followed by the client
        client.set(f"k{n}", n)
    assert [int(client.get(f"k{n}")) for n in range(50)] == list(range(50))
    nodes = {client.get_node_from_key(f"k{n}").name for n in range(50)}
    assert len(nodes) == 3
    report = primaries(client)
    assert report["topology"] == "cluster"
    masters = [port for port in cluster.ports if "role:master" in cluster.cli(port, "info", "replication")]
    assert sorted(p["address"] for p in report["primaries"]) == sorted(f"127.0.0.1:{p}" for p in masters)
    assert all(p["reachable"] for p in report["primaries"])
    client.close()


def test_readyz_on_a_cluster(redis_cluster: Cluster, redis_url: str) -> None:
    env = {"FLASK_ENV": "testing", "REDIS_URL": redis_cluster.url, "JOBS_REDIS_URL": redis_url}
    app = create_app(env)
    body = app.test_client().get("/readyz").get_json()
    assert body["ready"] is True and body["topology"] == "cluster"
    assert len(body["checks"]["redis"]["primaries"]) == 3
