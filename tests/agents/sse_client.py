"""A spec-following server-sent events parser for the tests (WHATWG HTML, 9.2.6).

Lines end at CRLF, LF or CR; a blank line dispatches the event; ``:`` starts a
comment. Parsing exactly as a browser would is what lets the tests prove that
hostile content cannot add or split frames.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

_LINE_END = re.compile(r"\r\n|\r|\n")


@dataclass
class Event:
    event: str
    data: str
    id: str | None

    @property
    def json(self) -> Any:
        return json.loads(self.data)


@dataclass
class SSEParser:
    comments: list[str] = field(default_factory=list)
    _buffer: str = ""
    _data: list[str] = field(default_factory=list)
    _event: str = ""
    _last_id: str | None = None

    def feed(self, text: str) -> list[Event]:
        """Parse complete lines of ``text`` (kept across calls); return the events dispatched."""
        self._buffer += text
        events = []
        while True:
            match = _LINE_END.search(self._buffer)
            # A lone CR at the end may be the first half of a CRLF: wait for more.
            if match is None or (match.group() == "\r" and match.end() == len(self._buffer)):
                return events
            line, self._buffer = self._buffer[: match.start()], self._buffer[match.end() :]
            event = self._line(line)
            if event is not None:
                events.append(event)

    def _line(self, line: str) -> Event | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            self.comments.append(line[1:].strip())
            return None
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        return None

    def _dispatch(self) -> Event | None:
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Event(event or "message", "\n".join(data), self._last_id)


def parse(text: str) -> tuple[list[Event], list[str]]:
    parser = SSEParser()
    return parser.feed(text), parser.comments


def iter_events(chunks: Iterable[bytes | str], parser: SSEParser | None = None) -> Iterator[Event]:
    """Events as they arrive from a streamed body."""
    parser = parser or SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk.decode() if isinstance(chunk, bytes) else chunk)
