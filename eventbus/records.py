"""Plain values that cross the layers: what storage returns, what responses show."""

from __future__ import annotations

from typing import Any, NamedTuple

UNPROCESSED, PROCESSED, RETRY, DEAD = 0, 1, 2, 3
STATUS_NAMES = {UNPROCESSED: "unprocessed", PROCESSED: "processed", RETRY: "retry", DEAD: "dead"}


class Stream(NamedTuple):
    sid: int
    id: str
    name: str
    created_at: int
    max_deliveries: int | None
    retention_seconds: int | None


class Event(NamedTuple):
    seq: int
    id: str
    stream_id: str
    status: int
    created_at: int
    body: str
    deliveries: int
    lease_id: str | None
    lease_expires: int | None

    def __reduce__(self) -> tuple[Any, ...]:
        # Unpickled by tuple.__new__ (C), not NamedTuple's __new__ (Python):
        # the SQLite writer process sends thousands per second.
        return (tuple.__new__, (Event, tuple(self)))


class Page(NamedTuple):
    """A stream's events, and where the next page starts (None at the end)."""

    stream: Stream
    events: list[Event]
    next_after_seq: int | None


class Written(NamedTuple):
    """The events a write created, or the earlier one an idempotency key names."""

    events: list[Event]
    duplicate: bool

    @property
    def count(self) -> int:
        return len(self.events)

    def __reduce__(self) -> tuple[Any, ...]:
        return (tuple.__new__, (Written, tuple(self)))


class WriteAnswer(NamedTuple):
    """A committed write already turned into its answer line, by the writer
    that committed it (off the reactor thread): what the server sends, and
    what it counts."""

    line: bytes
    count: int
    duplicate: bool


class Marked(NamedTuple):
    marked: int
    not_found: list[str]
    lease_lost: list[str]
    streams: list[str]  # names of the streams whose events were marked


class Stats(NamedTuple):
    unprocessed: int
    processed: int
    retry: int
    dead: int
    leased: int
    total: int
