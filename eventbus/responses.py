"""Response lines: the objects of PROTOCOL.md section 4 and the response
envelope of section 3, encoded with orjson.

Event bodies are stored as compact JSON text and spliced in with
``orjson.Fragment``: never decoded, never encoded again.
"""

from __future__ import annotations

from typing import Any

import orjson

from eventbus.clock import rfc3339
from eventbus.errors import BusError
from eventbus.records import Event, Page, Stream, WriteAnswer, Written


class Unanswered(bytes):
    """The "answer" of a request whose outcome is unknown
    (:class:`~eventbus.errors.OutcomeUnknown`): nothing is sent for it, and
    its connection closes once the answers before it are sent."""


UNANSWERED = Unanswered()


def stream_json(stream: Stream) -> dict[str, Any]:
    out: dict[str, Any] = {"id": stream.id, "name": stream.name, "created_at": rfc3339(stream.created_at)}
    if stream.max_deliveries is not None:
        out["max_deliveries"] = stream.max_deliveries
    if stream.retention_seconds is not None:
        out["retention_seconds"] = stream.retention_seconds
    return out


def event_json(event: Event, leased: bool = False) -> dict[str, Any]:
    out = {
        "id": event.id,
        "stream_id": event.stream_id,
        "status": event.status,
        "created_at": rfc3339(event.created_at),
        # Stored as compact JSON text: spliced in, never decoded again.
        "body": orjson.Fragment(event.body),
        "seq": event.seq,
        "deliveries": event.deliveries,
    }
    if leased:
        out["lease_id"] = event.lease_id
        out["lease_expires_at"] = rfc3339(event.lease_expires)
    return out


# Every write is answered with these lines: formatted directly, they cost a
# fraction of building the dicts and encoding them, and they are byte for
# byte what ok_line gives for event_json's dicts (tested). Ids and times are
# ASCII; the body is already compact JSON text. The fields the events of one
# write share (stream, status, time, deliveries) go into a template once;
# each event then fills in its id, body and seq (a write_events of 100:
# 0.5 us an event instead of 1.0).
_EVENT_TEMPLATE = (
    '{"id":"%%s","stream_id":"%s","status":%d,"created_at":"%s","body":%%s,"seq":%%d,"deliveries":%d}'
)


def _event_texts(events: list[Event]) -> list[str]:
    out = []
    shared = None
    template = ""
    for seq, eid, stream_id, status, created_at, body, deliveries, _lease, _expires in events:
        if shared != (stream_id, status, created_at, deliveries):
            shared = (stream_id, status, created_at, deliveries)
            # A literal % in the shared fields (none in a UUID) stays one.
            fields = (stream_id.replace("%", "%%"), status, rfc3339(created_at), deliveries)
            template = _EVENT_TEMPLATE % fields
        out.append(template % (eid, body, seq))
    return out


def written_one_line(event: Event) -> bytes:
    """The write_event answer for a newly written ``event``."""
    text = _event_texts([event])[0]
    return f'{{"operation":"write_event","status":true,"body":{{"event":{text}}}}}\n'.encode()


def written_line(events: list[Event]) -> bytes:
    """The write_events answer for newly written ``events``."""
    texts = ",".join(_event_texts(events))
    return f'{{"operation":"write_events","status":true,"body":{{"events":[{texts}]}}}}\n'.encode()


def write_event_answer(written: Written) -> WriteAnswer:
    """The write_event answer to ``written``. Made by the writer that
    committed it, off the reactor thread (``render`` in storage.writer)."""
    if written.duplicate:
        line = ok_line("write_event", {"event": event_json(written.events[0]), "duplicate": True})
    else:
        line = written_one_line(written.events[0])
    return WriteAnswer(line, written.count, written.duplicate)


def write_events_answer(written: Written) -> WriteAnswer:
    """The write_events answer to ``written``, as :func:`write_event_answer`."""
    return WriteAnswer(written_line(written.events), written.count, written.duplicate)


def page_json(page: Page, leased: bool = False) -> dict[str, Any]:
    return {"events": [event_json(e, leased) for e in page.events], "next_after_seq": page.next_after_seq}


def ok_line(operation: str, body: Any = None) -> bytes:
    response: dict[str, Any] = {"operation": operation, "status": True}
    if body is not None:
        response["body"] = body
    return orjson.dumps(response) + b"\n"


def error_line(operation: str, error: BusError) -> bytes:
    response: dict[str, Any] = {
        "operation": operation,
        "status": False,
        "reason": error.reason,
        "code": error.code,
    }
    if error.context is not None:
        response["context"] = error.context
    return orjson.dumps(response) + b"\n"
