"""The gateway on a real redis-server that speaks TLS only (``rediss://``), trusting a test
CA named by redis-py's standard ``ssl_ca_certs`` URL parameter."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from auth import keys
from auth.loaders import pepper
from core.extensions import get_redis
from devtools.redis_server import find_redis_server, free_port
from gateway import create_app


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for 127.0.0.1, made with openssl."""
    ca_key, ca, key, csr, cert = (directory / n for n in ("ca.key", "ca.crt", "s.key", "s.csr", "s.crt"))
    run = lambda *args: subprocess.run(["openssl", *args], check=True, capture_output=True)  # noqa: E731
    run("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(ca_key), "-out", str(ca),
        "-days", "1", "-subj", "/CN=gateway test CA")  # fmt: skip
    run(
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        str(key),
        "-out",
        str(csr),
        "-subj",
        "/CN=127.0.0.1",
    )
    ext = directory / "ext.cnf"
    ext.write_text("subjectAltName=IP:127.0.0.1\n")
    run("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial",
        "-out", str(cert), "-days", "1", "-extfile", str(ext))  # fmt: skip
    return ca, cert, key


@pytest.fixture(scope="module")
def tls_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    directory = tmp_path_factory.mktemp("tls")
    try:
        ca, cert, key = _certificates(directory)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("openssl is needed to make the test certificates")
    port = free_port()
    args = [find_redis_server(), "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
            "--tls-cert-file", str(cert), "--tls-key-file", str(key), "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no", "--dir", str(directory), "--save", "",
            "--appendonly", "no"]  # fmt: skip
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca}"
    client = redis.Redis.from_url(url, socket_timeout=0.5, socket_connect_timeout=0.5)
    deadline = time.monotonic() + 10
    while True:
        if process.poll() is not None:
            message = (process.stderr.read() if process.stderr else b"").decode(errors="replace")
            if "TLS" in message or "tls" in message:
                pytest.skip(f"this redis-server has no TLS support: {message.strip()[:120]}")
            raise RuntimeError(f"redis-server with TLS exited: {message}")
        try:
            if client.ping():
                break
        except redis.RedisError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)
    client.close()
    try:
        yield url
    finally:
        process.terminate()
        process.wait(timeout=10)


def test_the_gateway_on_a_tls_redis(test_env: dict[str, str], tls_url: str) -> None:
    env = {**test_env, "REDIS_URL": tls_url, "JOBS_REDIS_URL": ""}
    app = create_app(env)
    with app.app_context():
        _, secret = keys.create_key(get_redis(), pepper=pepper(app), name="tls", scopes=["events:read"],
                                    rate_limit="2/minute")  # fmt: skip
    client = app.test_client()
    headers = {"Authorization": f"Bearer {secret}"}
    assert [client.get("/events", headers=headers).status_code for _ in range(3)] == [200, 200, 429]
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.get_json()["checks"]["redis"]["status"] == "ok"


def test_a_tls_redis_without_the_ca_is_not_trusted(test_env: dict[str, str], tls_url: str) -> None:
    untrusted = tls_url.split("?")[0]  # the system's CAs only: the test CA is unknown
    ready = (
        create_app({**test_env, "REDIS_URL": untrusted, "JOBS_REDIS_URL": ""}).test_client().get("/readyz")
    )
    assert ready.status_code == 503 and ready.get_json()["ready"] is False
