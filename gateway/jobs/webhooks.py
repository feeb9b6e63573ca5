"""Quota alerts POSTed to ``WEBHOOK_URL`` by the job worker, signed like Stripe's webhooks.

``X-Gateway-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(WEBHOOK_SECRET, "<t>." + body)>``.
The job carries only the alert's JSON body: the URL and the secret are read from the
worker's own configuration, so neither is ever stored in Redis. A failed delivery (a
non-2xx answer, a refused connection, no answer within ``WEBHOOK_TIMEOUT``) raises, and
RQ retries it with exponential backoff (``RETRY_INTERVALS``) before it counts as failed.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import time
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from gateway.jobs.queue import get_queue

ENTRY_POINT = "gateway.jobs.webhooks.deliver"
RETRY_INTERVALS = (1, 2, 4, 8, 16, 32)  # seconds: exponential, bounded (6 retries, about a minute)
SIGNATURE_HEADER = "X-Gateway-Signature"
log = logging.getLogger(__name__)


class DeliveryFailed(RuntimeError):
    """The receiver did not take the alert (RQ retries the job)."""


def signature(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), str(timestamp).encode() + b"." + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def safe_url(url: str) -> str:
    """The URL for logs: scheme, host and path, never user:password or the query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _without_credentials(url: str) -> tuple[str, str | None]:
    """The URL without ``user:password@``, and those as a Basic ``Authorization`` value."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    netloc = parts.netloc.rpartition("@")[2]
    pair = f"{unquote(parts.username)}:{unquote(parts.password or '')}"
    return urlunsplit(
        (parts.scheme, netloc, parts.path, parts.query, parts.fragment)
    ), "Basic " + base64.b64encode(pair.encode()).decode()


def post(url: str, secret: str, body: bytes, timeout: float) -> int:
    """POST one signed body; the receiver's status, or DeliveryFailed."""
    target, basic = _without_credentials(url)
    request = urllib.request.Request(target, data=body, method="POST")  # noqa: S310  # http(s) only: config
    if basic is not None:
        request.add_header("Authorization", basic)
    request.add_header("Content-Type", "application/json")
    request.add_header(SIGNATURE_HEADER, signature(secret, body, int(time.time())))
    try:
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310  # operator's URL
            return int(answer.status)
    except urllib.error.HTTPError as exc:
        raise DeliveryFailed(f"{safe_url(url)} answered {exc.code}") from None
    except (OSError, ValueError) as exc:  # refused, reset, timed out, a bad URL
        raise DeliveryFailed(f"{safe_url(url)} unreachable ({type(exc).__name__})") from None


def deliver(body: str) -> dict[str, Any]:
    """The job: POST ``body`` (the alert's JSON) to the worker's WEBHOOK_URL."""
    from gateway.jobs.tasks import worker_app

    config = worker_app().config
    url, secret = config.get("WEBHOOK_URL"), config.get("WEBHOOK_SECRET")
    if not url or not secret:
        return {"delivered": False, "reason": "WEBHOOK_URL not set in the worker"}
    status = post(url, secret, body.encode(), config["WEBHOOK_TIMEOUT"])
    log.info("quota alert delivered to %s (%d)", safe_url(url), status)
    return {"delivered": True, "status": status}


def enqueue(connection: Any, alert: dict[str, Any]) -> None:
    """Queue one alert's delivery (the gateway's shared queue, which every worker drains)."""
    from rq import Retry

    body = json.dumps(alert, separators=(",", ":"), sort_keys=True)
    get_queue(connection).enqueue(
        ENTRY_POINT, body, retry=Retry(max=len(RETRY_INTERVALS), interval=list(RETRY_INTERVALS)),
        result_ttl=86400, failure_ttl=7 * 86400,
    )  # fmt: skip
