"""Security headers of API answers in one step, in place of Talisman's per-request hooks.

Talisman, through its public options, does the work in ``gateway.security``: a
nonce for every request, and for every answer its options looked up again per
hook and its page policy re-parsed from the dict (``_get_local_options`` runs
five times per answer), after which ``finish_headers`` swaps the page policy for
the API one. An API answer's headers never vary, so with this shortcut:

* Talisman's three hooks are unregistered (by their private names);
* an API answer that set none of the headers itself gets the precomputed set
  (``gateway.security.API_HEADERS``, in the order the public path leaves them)
  appended to Werkzeug's header list at once (``Headers.extend`` would validate
  the same constants again on every answer);
* every other answer (HTML pages, static files, answers that set one of these
  headers) goes through Talisman's own header hook and ``finish_headers``,
  exactly as without the shortcut;
* the CSP nonce is made when a page needs it (in a template's ``csp_nonce()``,
  or when its headers are set), with Talisman's own generator, not on every request.

Measured as Python function calls per request (cProfile over 1,000 WSGI calls):
Talisman's public path adds about 410 calls to a secured ``GET /auth/me`` (661
with every shortcut on) and 375 to ``GET /healthz`` (413). In CPU time, with all
of ``gateway.fastpath`` off ``/auth/me`` took 800-1050 us against 410-620 us on
(medians of 7 runs of 2,000 WSGI calls, on a machine under load). Upstream internals relied on (guarded by
tests/fastpath/test_headers_guard.py): Talisman's bound hooks ``_force_https``,
``_make_nonce`` (before_request) and ``_set_response_headers`` (after_request),
the nonce read from ``request.csp_nonce``, and ``Headers._list``.
"""

from __future__ import annotations

from collections.abc import Callable

from flask import Flask, Response, request
from flask_talisman import Talisman
from flask_talisman.talisman import NONCE_LENGTH, get_random_string
from werkzeug.datastructures import Headers

Hook = Callable[[Response], Response]


def csp_nonce() -> str:
    """This request's CSP nonce, made on first use (templates call ``csp_nonce()``)."""
    nonce: str | None = getattr(request, "csp_nonce", None)
    if nonce is None:
        nonce = request.csp_nonce = get_random_string(NONCE_LENGTH)  # type: ignore[attr-defined]
    return nonce


def install(
    app: Flask,
    talisman: Talisman,
    *,
    api_headers: tuple[tuple[str, str], ...],
    finish: Hook,
    is_page: Callable[[Response], bool],
    is_static: Callable[[], bool],
) -> None:
    """Replace Talisman's hooks and ``finish`` (already registered) by one hook sending the same headers."""
    names = frozenset(name.lower() for name, _ in api_headers)
    set_talisman_headers: Hook = talisman._set_response_headers

    def send_headers(response: Response) -> Response:
        page = is_page(response)
        headers = response.headers
        if not page and not is_static() and not any(name.lower() in names for name, _ in headers):
            headers._list.extend(api_headers)  # type: ignore[attr-defined]
            return response
        if page:
            csp_nonce()  # Talisman writes the nonce into the policy when the request has one
        return finish(set_talisman_headers(response))

    app.before_request_funcs[None].remove(talisman._force_https)
    app.before_request_funcs[None].remove(talisman._make_nonce)
    after = app.after_request_funcs[None]
    after.remove(set_talisman_headers)
    after[after.index(finish)] = send_headers  # same place: the hooks around it keep their order
    app.jinja_env.globals["csp_nonce"] = csp_nonce


def append_built_headers(headers: Headers, items: list[tuple[str, str]]) -> None:
    """Append header items the gateway built from constant names and numeric or policy-name
    values straight to Werkzeug's list: ``Headers.extend`` would check each for newlines,
    which these cannot hold (about 5 us per answer for the five rate-limit headers)."""
    headers._list.extend(items)  # type: ignore[attr-defined]
