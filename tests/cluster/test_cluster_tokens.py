"""Token quotas on a Redis Cluster: the script's keys share the key's slot, so it runs there."""

from __future__ import annotations

from flask import Flask
from redis.cluster import RedisCluster

from auth import keys
from auth.loaders import pepper
from auth.scopes import ALL_SCOPES
from gateway.ratelimit import tokens
from tests.agents.sse_client import parse


def test_a_stream_reserves_and_settles_on_the_cluster(cluster_app: Flask, rc: RedisCluster) -> None:
    record, secret = keys.create_key(
        rc, pepper=pepper(cluster_app), name="t", scopes=list(ALL_SCOPES), token_quota="5000/day"
    )
    headers = {"Authorization": f"Bearer {secret}"}
    client = cluster_app.test_client()
    session = client.post("/agents/session", headers=headers).get_json()["session_id"]
    body = {"session_id": session, "role": "user", "content": "tokens on a cluster?"}
    assert client.post("/agents/message", json=body, headers=headers).status_code == 200
    response = client.get(f"/agents/stream?session_id={session}", headers=headers)
    assert response.status_code == 200 and '"tokens";q=5000' in response.headers["RateLimit-Policy"]
    events, _ = parse(response.get_data(as_text=True))
    usage = events[-1].json["usage"]
    policy = tokens.token_policy(record["id"], "5000/day")
    assert policy is not None
    window = tokens.peek(rc, policy)
    assert (window.used, window.held) == (usage["total_tokens"], 0)
