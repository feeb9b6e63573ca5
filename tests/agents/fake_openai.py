"""A real local HTTP server speaking OpenAI's streaming chat-completions format.

Modes: ``normal`` streams a reply word by word, ``slow`` sends one chunk then
stalls (to hit the client's read timeout), ``fail`` answers HTTP 500, ``reject``
answers HTTP 400 as OpenAI does for a context that is too long (the caller's own
fault), ``busy`` answers HTTP 429. Asked for ``stream_options.include_usage``, it ends with
OpenAI's usage chunk (empty ``choices``) unless ``send_usage`` is False (an upstream that
ignores the option).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

REFUSALS: dict[str, tuple[int, dict[str, Any]]] = {
    "reject": (
        400,
        {
            "error": {
                "message": "This model's maximum context length is 8192 tokens.",
                "type": "invalid_request_error",
                "code": "context_length_exceeded",
            }
        },
    ),
    "busy": (429, {"error": {"message": "Rate limit reached", "type": "requests"}}),
}


class FakeUpstream:
    def __init__(self) -> None:
        self.mode = "normal"
        self.stall_seconds = 3.0
        self.send_usage = True
        self.words = 0  # >0: the reply is this many words (long replies for token quotas)
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def start(self) -> FakeUpstream:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def reply_to(self, messages: list[dict[str, str]]) -> str:
        if self.words:
            return " ".join(f"word{i}" for i in range(self.words))
        return f"Upstream heard {len(messages)} messages, the last: {messages[-1]['content']}"

    def usage_of(self, messages: list[dict[str, str]]) -> dict[str, int]:
        """What it reports: a token per word, plus 3 per message (not the gateway's estimate)."""
        prompt = sum(3 + len(m["content"].split()) for m in messages)
        completion = len(self.reply_to(messages).split(" "))
        return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        upstream = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:  # keep test output quiet
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                upstream.requests.append(body)
                upstream.headers.append(dict(self.headers))
                if self.path != "/v1/chat/completions" or upstream.mode == "fail":
                    self._json(500, {"error": {"message": "upstream exploded"}})
                    return
                if upstream.mode in REFUSALS:
                    self._json(*REFUSALS[upstream.mode])
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()
                words = upstream.reply_to(body["messages"]).split(" ")
                for index, word in enumerate(words):
                    self._chunk({"role": "assistant"} if index == 0 else {})
                    self._chunk({"content": word if index == 0 else " " + word})
                    if upstream.mode == "slow":
                        time.sleep(upstream.stall_seconds)
                        return
                wants_usage = (body.get("stream_options") or {}).get("include_usage")
                if wants_usage and upstream.send_usage:
                    usage = upstream.usage_of(body["messages"])
                    chunk = {"object": "chat.completion.chunk", "choices": [], "usage": usage}
                    self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.write(b"data: [DONE]\n\n")

            def _chunk(self, delta: dict[str, str]) -> None:
                chunk = {"object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}
                self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                self.wfile.flush()

            def _json(self, status: int, body: dict[str, Any]) -> None:
                raw = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        return Handler
