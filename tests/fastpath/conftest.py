"""The rate-limit tests' app fixture (probe routes included), for the shortcuts' tests."""

from __future__ import annotations

from tests.ratelimit.conftest import make_app

__all__ = ["make_app"]
