"""A cluster URL builds a working client against a real three-node cluster, and /readyz
reports its primaries. The app's behaviour on a cluster: tests/cluster/."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from redis.cluster import RedisCluster

from core.redis import create_redis, primaries
from gateway import create_app
from tests.support.topology import SmallCluster, start_cluster

pytestmark = pytest.mark.topology


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SmallCluster]:
    running = start_cluster(Path(tmp_path_factory.mktemp("cluster")))
    yield running
    running.stop()


def test_a_cluster_url_builds_a_working_client(cluster: SmallCluster) -> None:
    client = create_redis(cluster.url, socket_timeout=0.5, connect_timeout=0.5)
    assert isinstance(client, RedisCluster)
    for n in range(50):  # keys on every node: MOVED followed by the client
        client.set(f"k{n}", n)
    assert [int(client.get(f"k{n}")) for n in range(50)] == list(range(50))
    nodes = {client.get_node_from_key(f"k{n}").name for n in range(50)}
    assert len(nodes) == 3
    report = primaries(client)
    assert report["topology"] == "cluster"
    assert sorted(p["address"] for p in report["primaries"]) == sorted(
        f"127.0.0.1:{n.port}" for n in cluster.nodes
    )
    assert all(p["reachable"] for p in report["primaries"])
    client.close()


def test_readyz_on_a_cluster(cluster: SmallCluster, redis_url: str) -> None:
    app = create_app({"FLASK_ENV": "testing", "REDIS_URL": cluster.url, "JOBS_REDIS_URL": redis_url})
    body = app.test_client().get("/readyz").get_json()
    assert body["ready"] is True and body["topology"] == "cluster"
    assert len(body["checks"]["redis"]["primaries"]) == 3
