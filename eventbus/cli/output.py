"""How the CLI shows things: JSON for scripts, tables for people, and a
progress bar that appears only when stderr is a terminal."""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TextIO

import orjson

from eventbus.client.models import Event, Status


def to_json(value: Any, pretty: bool = False) -> str:
    """Dataclasses, datetimes (RFC 3339, Z) and statuses as JSON text."""
    option = orjson.OPT_UTC_Z | orjson.OPT_NAIVE_UTC | (orjson.OPT_INDENT_2 if pretty else 0)
    return orjson.dumps(value, option=option).decode("utf-8")


def when(value: datetime | None) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S") if value is not None else "-"


def status_name(status: int) -> str:
    try:
        return Status(status).name.lower()
    except ValueError:
        return str(status)


def compact(value: Any) -> str:
    return orjson.dumps(value).decode("utf-8")


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]], width: int | None = None) -> str:
    """Aligned columns; numbers right-aligned; the last column cut to ``width``."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, cell in enumerate(row[:-1]):
            widths[i] = max(widths[i], len(cell))
    numeric = [all(_is_number(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        parts = []
        for i, cell in enumerate(row):
            if i == len(row) - 1:
                parts.append(cell.rjust(len(headers[i])) if numeric[i] else cell)
            else:
                parts.append(cell.rjust(widths[i]) if numeric[i] else cell.ljust(widths[i]))
        text = "  ".join(parts).rstrip()
        if width is not None and len(text) > width:
            text = text[: max(width - 1, 0)] + "…"
        return text

    return "\n".join([line(list(headers))] + [line(row) for row in cells])


def _is_number(text: str) -> bool:
    return text.replace(",", "").isdigit() or text == "-"


def terminal_width(stream: TextIO) -> int | None:
    """The width to cut lines to on a terminal; None (no cutting) when piped."""
    if not stream.isatty():
        return None
    return shutil.get_terminal_size((100, 24)).columns


def event_rows(events: Sequence[Event]) -> list[list[Any]]:
    return [
        [e.seq if e.seq is not None else "-", e.id, status_name(e.status), e.deliveries or 0,
         when(e.created_at), compact(e.body)]
        for e in events
    ]


EVENT_HEADERS = ("SEQ", "ID", "STATUS", "DELIVERIES", "CREATED (UTC)", "BODY")


class Progress:
    """``45% |██████░░░░| 4,500/10,000 events  1,234/s`` redrawn in place on a
    terminal, at most ten times a second; nothing at all when not a terminal."""

    def __init__(self, total: float | None, unit: str = "events", stream: TextIO | None = None,
                 enabled: bool | None = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total = total
        self.unit = unit
        self.started = time.monotonic()
        self._drawn = 0.0
        self._fancy = (getattr(self.stream, "encoding", "") or "").lower().replace("-", "") == "utf8"

    def update(self, count: int, done: float | None = None, force: bool = False) -> None:
        """``count`` items so far; ``done`` the amount against ``total`` (bytes,
        say) when that is not ``count`` itself."""
        if not self.enabled:
            return
        now = time.monotonic()
        if not force and now - self._drawn < 0.1:
            return
        self._drawn = now
        elapsed = max(now - self.started, 1e-6)
        rate = f"{count / elapsed:,.0f}/s"
        if self.total:
            fraction = min(1.0, (count if done is None else done) / self.total)
            full, empty = ("█", "░") if self._fancy else ("#", ".")
            bar = full * int(fraction * 24) + empty * (24 - int(fraction * 24))
            amount = f"{count:,}/{self.total:,.0f}" if done is None else f"{count:,}"
            text = f"{fraction * 100:3.0f}% |{bar}| {amount} {self.unit}  {rate}"
        else:
            text = f"{count:,} {self.unit}  {rate}"
        self.stream.write("\r" + text + "\x1b[K")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
