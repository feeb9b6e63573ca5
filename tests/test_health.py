from __future__ import annotations

import pytest
from flask.testing import FlaskClient


@pytest.mark.parametrize("path", ["/healthz", "/health"])
def test_liveness_answers_plain_ok(client: FlaskClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert response.get_data(as_text=True) == "ok"


def test_readyz_reports_redis_latency(client: FlaskClient) -> None:
    body = client.get("/readyz").get_json()
    assert body["ready"] is True and body["status"] == "healthy"
    assert body["checks"]["redis"]["status"] == "ok"
    assert body["checks"]["redis"]["latency_ms"] >= 0
    assert "timestamp" in body


def test_readyz_is_503_json_when_redis_is_unreachable(test_env: dict[str, str]) -> None:
    from devtools.redis_server import free_port
    from gateway import create_app

    app = create_app({**test_env, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0"})
    response = app.test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["ready"] is False
    assert app.test_client().get("/healthz").status_code == 200
