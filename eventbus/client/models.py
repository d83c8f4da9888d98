"""The plain objects client calls return: frozen dataclasses, no sockets inside.

Fields the server adds later are ignored, so an older client keeps working
against a newer server (PROTOCOL.md 4: clients ignore fields they do not know).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum
from typing import Any


class Status(IntEnum):
    """An event's status; ``Status.parse`` also takes the names the CLI uses."""

    UNPROCESSED = 0
    PROCESSED = 1
    RETRY = 2
    DEAD = 3

    @classmethod
    def parse(cls, value: int | str | Status) -> Status:
        if isinstance(value, str):
            text = value.strip().lower()
            if text.isdigit():
                return cls(int(text))
            try:
                return cls[text.upper()]
            except KeyError:
                names = ", ".join(s.name.lower() for s in cls)
                raise ValueError(f"status must be 0-3 or one of {names}; got {value!r}") from None
        return cls(value)


def parse_time(text: str | None) -> datetime | None:
    """RFC 3339 with a ``Z`` suffix, as the server writes it, to an aware datetime."""
    if not text:
        return None
    return datetime.fromisoformat(text)


@dataclass(frozen=True)
class Stream:
    id: str
    name: str
    created_at: datetime | None
    max_deliveries: int | None = None
    retention_seconds: int | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stream:
        return cls(
            id=data["id"],
            name=data["name"],
            created_at=parse_time(data.get("created_at")),
            max_deliveries=data.get("max_deliveries"),
            retention_seconds=data.get("retention_seconds"),
        )


@dataclass(frozen=True)
class Event:
    id: str
    stream_id: str
    status: Status
    created_at: datetime | None
    body: Any
    seq: int | None = None
    deliveries: int | None = None
    #: Set on events handed out under a lease (``lease_seconds``); pass it
    #: back to ``mark_event`` so a mark after the lease ran out is refused.
    lease_id: str | None = None
    lease_expires_at: datetime | None = None

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        return cls(
            id=data["id"],
            stream_id=data.get("stream_id", ""),
            status=Status(data.get("status", 0)),
            created_at=parse_time(data.get("created_at")),
            body=data.get("body"),
            seq=data.get("seq"),
            deliveries=data.get("deliveries"),
            lease_id=data.get("lease_id"),
            lease_expires_at=parse_time(data.get("lease_expires_at")),
        )


@dataclass(frozen=True)
class Stats:
    unprocessed: int = 0
    processed: int = 0
    retry: int = 0
    dead: int = 0
    leased: int = 0
    total: int = 0

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Stats:
        return cls(**{k: int(data.get(k, 0)) for k in cls.__dataclass_fields__})


@dataclass(frozen=True)
class StreamInfo:
    stream: Stream
    #: None from a server without the statistics extension.
    stats: Stats | None


@dataclass(frozen=True)
class EventPage:
    """One response's events; ``next_after_seq`` pages on (None: the end)."""

    events: list[Event] = field(default_factory=list)
    next_after_seq: int | None = None

    def __iter__(self) -> Iterator[Event]:
        return iter(self.events)

    def __len__(self) -> int:
        return len(self.events)

    def __bool__(self) -> bool:
        return bool(self.events)


@dataclass(frozen=True)
class Written:
    """A ``write_event`` result; ``duplicate``: the key named an earlier event."""

    event: Event
    duplicate: bool = False


@dataclass(frozen=True)
class MarkResult:
    marked: int
    not_found: list[str] = field(default_factory=list)
    lease_lost: list[str] = field(default_factory=list)
