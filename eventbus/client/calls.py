"""One builder per operation: the request body, how to read the answer, and
whether the request may be sent again after a lost connection.

The blocking client, its pipeline and the Twisted client all use these, so
the three agree on every field.

Safe to retry (sending it twice changes nothing more than sending it once):
``health``, ``list_streams``, ``get_stream_info``, ``get_stream_events``,
``process_events`` / ``retry_events`` *without* ``lease_seconds``,
``write_event`` *with* ``key`` (the server deduplicates), and
``mark_event`` / ``mark_events`` *without* ``lease_id`` (setting a status
twice is setting it once). Everything else is not: a second
``create_stream`` or ``delete_stream`` would be refused although the first
worked, a keyless write would be stored twice, a second lease would hand out
other events, and a mark under a lease that the first mark ended is refused
with ``lease_lost``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson

from eventbus.client.models import (
    Event,
    EventPage,
    MarkResult,
    Stats,
    Status,
    Stream,
    StreamInfo,
    Written,
)

T = TypeVar("T")


@dataclass(frozen=True)
class Call(Generic[T]):
    operation: str
    body: dict[str, Any] | None
    parse: Callable[[Any], T]
    #: May be sent again on a new connection when the answer was lost.
    safe: bool
    auth: bool = True

    def line(self, credentials: bytes | None) -> bytes:
        """The request line; ``credentials`` (see :func:`credentials`) are
        sent as ``auth`` when given and the operation takes them."""
        parts = [b'{"operation":', orjson.dumps(self.operation)]
        if self.auth and credentials is not None:
            parts += [b',"auth":', credentials]
        if self.body is not None:
            parts += [b',"body":', orjson.dumps(self.body)]
        parts.append(b"}\n")
        return b"".join(parts)


def credentials(client_id: str | None, client_secret: str | None) -> bytes | None:
    """The ``auth`` object, encoded once per client; None unless both are given."""
    if client_id is None or client_secret is None:
        return None
    return orjson.dumps({"client_id": client_id, "client_secret": client_secret})


def _none(_: Any) -> None:
    return None


def _stream(body: Any) -> Stream:
    return Stream.from_json(body["stream"])


def _info(body: Any) -> StreamInfo:
    stats = body.get("stats")
    return StreamInfo(Stream.from_json(body["stream"]), Stats.from_json(stats) if stats is not None else None)


def _streams(body: Any) -> list[Stream]:
    return [Stream.from_json(s) for s in body["streams"]]


def _page(body: Any) -> EventPage:
    return EventPage([Event.from_json(e) for e in body["events"]], body.get("next_after_seq"))


def _written(body: Any) -> Written:
    if body is None:  # the original server acknowledged writes with no body
        raise ValueError("the server did not return the written event")
    return Written(Event.from_json(body["event"]), bool(body.get("duplicate", False)))


def _events(body: Any) -> list[Event]:
    return [Event.from_json(e) for e in body["events"]]


def _marked(body: Any) -> MarkResult:
    return MarkResult(int(body["marked"]), list(body.get("not_found", [])), list(body.get("lease_lost", [])))


def _optional(body: dict[str, Any], **fields: Any) -> dict[str, Any]:
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


def health() -> Call[None]:
    return Call("health", None, _none, safe=True, auth=False)


def exit() -> Call[None]:
    """Ask the server to close the connection after answering."""
    return Call("exit", None, _none, safe=False, auth=False)


def list_streams() -> Call[list[Stream]]:
    return Call("list_streams", {}, _streams, safe=True)


def create_stream(
    name: str, *, max_deliveries: int | None = None, retention_seconds: int | None = None
) -> Call[Stream]:
    body = _optional(
        {"stream_name": name}, max_deliveries=max_deliveries, retention_seconds=retention_seconds
    )
    return Call("create_stream", body, _stream, safe=False)


def delete_stream(name: str) -> Call[None]:
    return Call("delete_stream", {"stream_name": name}, _none, safe=False)


def get_stream_info(name: str) -> Call[StreamInfo]:
    return Call("get_stream_info", {"stream_name": name}, _info, safe=True)


def get_stream_events(
    name: str, *, limit: int | None = None, after_seq: int | None = None
) -> Call[EventPage]:
    body = _optional({"stream_name": name}, limit=limit, after_seq=after_seq)
    return Call("get_stream_events", body, _page, safe=True)


def _consuming(operation: str) -> Callable[..., Call[EventPage]]:
    """The builder of ``process_events`` or ``retry_events``: the same options."""

    def build(
        name: str,
        *,
        limit: int | None = None,
        after_seq: int | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float | None = None,
    ) -> Call[EventPage]:
        body = _optional(
            {"stream_name": name},
            limit=limit,
            after_seq=after_seq,
            lease_seconds=lease_seconds,
            wait_seconds=wait_seconds,
        )
        return Call(operation, body, _page, safe=lease_seconds is None)

    build.__name__ = build.__qualname__ = operation
    return build


process_events = _consuming("process_events")
retry_events = _consuming("retry_events")


def write_event(name: str, event: Any, *, key: str | None = None) -> Call[Written]:
    if event is None:
        raise ValueError("an event body cannot be None (JSON null)")
    body = _optional({"stream_name": name, "event": event}, key=key)
    return Call("write_event", body, _written, safe=key is not None)


def write_events(name: str, events: Iterable[Any]) -> Call[list[Event]]:
    values = list(events)
    if any(v is None for v in values):
        raise ValueError("an event body cannot be None (JSON null)")
    return Call("write_events", {"stream_name": name, "events": values}, _events, safe=False)


def mark_event(event_id: str, status: int | str | Status, *, lease_id: str | None = None) -> Call[None]:
    body = _optional({"event_id": event_id, "status": int(Status.parse(status))}, lease_id=lease_id)
    return Call("mark_event", body, _none, safe=lease_id is None)


def mark_events(
    event_ids: Iterable[str], status: int | str | Status, *, lease_id: str | None = None
) -> Call[MarkResult]:
    body = _optional({"event_ids": list(event_ids), "status": int(Status.parse(status))}, lease_id=lease_id)
    return Call("mark_events", body, _marked, safe=lease_id is None)
