"""Issue 11, item 8: POST /jobs and POST /admin/keys honour Idempotency-Key like POST /events."""

from __future__ import annotations

from collections.abc import Callable

import redis
from flask.testing import FlaskClient

Headers = dict[str, str]
JOB = {"name": "agent.run", "args": {"prompt": "hi"}}


def _with(headers: Headers, key: str) -> Headers:
    return {**headers, "Idempotency-Key": key}


def test_a_retried_job_is_one_job(client: FlaskClient, auth_headers: Callable[..., Headers]) -> None:
    headers = auth_headers("jobs:read", "jobs:write")
    first = client.post("/jobs", json=JOB, headers=_with(headers, "retry-1"))
    again = client.post("/jobs", json=JOB, headers=_with(headers, "retry-1"))
    assert first.status_code == again.status_code == 202
    assert again.get_json() == first.get_json()
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert client.get("/jobs", headers=headers).get_json()["total"] == 1
    other_body = client.post(
        "/jobs", json={**JOB, "args": {"prompt": "other"}}, headers=_with(headers, "retry-1")
    )
    assert other_body.status_code == 409 and other_body.get_json()["status_code"] == 409
    assert client.post("/jobs", json=JOB, headers=_with(headers, "")).status_code == 400


def test_job_keys_are_per_identity(client: FlaskClient, auth_headers: Callable[..., Headers]) -> None:
    a, b = auth_headers("jobs:read", "jobs:write"), auth_headers("jobs:read", "jobs:write")
    job_a = client.post("/jobs", json=JOB, headers=_with(a, "same")).get_json()["job_id"]
    job_b = client.post("/jobs", json={**JOB, "args": {"prompt": "b"}}, headers=_with(b, "same"))
    assert job_b.status_code == 202 and job_b.get_json()["job_id"] != job_a


def test_a_refused_job_is_not_remembered(client: FlaskClient, auth_headers: Callable[..., Headers]) -> None:
    headers = auth_headers("jobs:read", "jobs:write")
    bad = {"name": "agent.run", "args": {"prompt": ""}}
    assert client.post("/jobs", json=bad, headers=_with(headers, "k")).status_code == 400
    assert client.post("/jobs", json=JOB, headers=_with(headers, "k")).status_code == 202


def test_a_retried_key_create_is_one_key_with_its_secret(
    client: FlaskClient, auth_headers: Callable[..., Headers], r: redis.Redis
) -> None:
    admin = auth_headers("admin")
    body = {"name": "ci", "scopes": ["jobs:read"]}
    before = client.get("/admin/keys", headers=admin).get_json()["total"]
    first = client.post("/admin/keys", json=body, headers=_with(admin, "create-1"))
    again = client.post("/admin/keys", json=body, headers=_with(admin, "create-1"))
    assert first.status_code == again.status_code == 201
    assert again.get_json() == first.get_json()
    assert client.get("/admin/keys", headers=admin).get_json()["total"] == before + 1
    secret = first.get_json()["key"]
    assert client.get("/auth/me", headers={"X-API-Key": secret}).status_code == 200
    stored = b"".join(r.dump(k) or b"" for k in r.scan_iter("gw:idempotency:*"))
    assert stored and secret.encode() not in stored  # never kept in clear
    other = client.post("/admin/keys", json={**body, "name": "other"}, headers=_with(admin, "create-1"))
    assert other.status_code == 409


def test_key_create_keys_are_per_identity(client: FlaskClient, auth_headers: Callable[..., Headers]) -> None:
    one, two = auth_headers("admin"), auth_headers("admin")
    body = {"name": "ci"}
    first = client.post("/admin/keys", json=body, headers=_with(one, "same")).get_json()
    second = client.post("/admin/keys", json=body, headers=_with(two, "same"))
    assert second.status_code == 201 and second.get_json()["id"] != first["id"]
    assert second.headers.get("Idempotent-Replayed") is None
