"""Signals one area sends and another listens to, so that neither imports the other.

Blinker is the signal library Flask itself uses (``flask.signals``); a receiver connects with
``signal.connect(fn)`` and gets the sender plus the keyword arguments named below. Senders
pass the Flask app (``current_app._get_current_object()``) as the sender.
"""

from __future__ import annotations

from blinker import Namespace

_signals = Namespace()

# An agent reply's tokens were counted (settled) for one identity.
# kwargs: key_id: str | None, owner: str, usage: dict[str, int] with prompt_tokens,
# completion_tokens, total_tokens; estimated: bool.
tokens_counted = _signals.signal("tokens-counted")

# A quota window's counter moved (requests or tokens).
# kwargs: key_id: str, kind: "requests" | "tokens", limit: int, window_seconds: int,
# window_start: int (unix seconds), before: int, after: int (units used in this window).
quota_window_used = _signals.signal("quota-window-used")
