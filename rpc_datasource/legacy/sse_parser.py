"""An incremental `text/event-stream` parser following the WHATWG rules (pure)."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_EVENT = "message"


@dataclass(frozen=True)
class SseEvent:
    """One dispatched event: its type, its data (lines joined by LF) and the last event id."""

    event: str
    data: str
    id: str | None = None


class SseParser:
    """Feed decoded text in chunks of any size; get back the events completed so far."""

    def __init__(self) -> None:
        self.last_event_id: str | None = None
        self.retry_ms: int | None = None
        self._pending = ""
        self._after_cr = False
        self._at_start = True
        self._event_type = ""
        self._data: list[str] = []

    def feed(self, text: str) -> list[SseEvent]:
        """Consume `text`; the events whose blank line arrived in it."""
        if not text:
            return []
        if self._at_start:
            text = text.removeprefix("\ufeff")
            self._at_start = False
        if self._after_cr and text.startswith("\n"):
            text = text[1:]
        self._after_cr = text.endswith("\r")
        lines = (self._pending + text).replace("\r\n", "\n").replace("\r", "\n").split("\n")
        self._pending = lines.pop()
        events = []
        for line in lines:
            event = self._process_line(line)
            if event is not None:
                events.append(event)
        return events

    def _process_line(self, line: str) -> SseEvent | None:
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "event":
            self._event_type = value
        elif field == "data":
            self._data.append(value)
        elif field == "id":
            if "\0" not in value:
                self.last_event_id = value
        elif field == "retry" and value.isascii() and value.isdigit():
            self.retry_ms = int(value)
        return None

    def _dispatch(self) -> SseEvent | None:
        data, event_type = self._data, self._event_type
        self._data, self._event_type = [], ""
        if not data:
            return None
        return SseEvent(event_type or DEFAULT_EVENT, "\n".join(data), self.last_event_id)
