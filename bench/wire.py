"""Pre-encoded requests: the exact bytes each load sends, built once.

Event Bus and the echo server get the same newline-delimited JSON lines;
Redis gets the equivalent commands in RESP.
"""

from __future__ import annotations

from typing import Any

import orjson

from bench.servers import AUTH

#: A small, typical event: what every write of the bench carries.
EVENT: dict[str, Any] = {"order": 12345, "item": "widget", "qty": 3, "note": "a benchmark event"}
EVENT_JSON = orjson.dumps(EVENT)


def line(operation: str, body: dict[str, Any] | None = None, auth: bool = True) -> bytes:
    """One request line of the Event Bus protocol."""
    request: dict[str, Any] = {"operation": operation}
    if auth:
        request["auth"] = AUTH
    if body is not None:
        request["body"] = body
    return orjson.dumps(request) + b"\n"


def create_stream(name: str) -> bytes:
    return line("create_stream", {"stream_name": name})


def write_event(stream: str) -> bytes:
    return line("write_event", {"stream_name": stream, "event": EVENT})


def write_events(stream: str, count: int) -> bytes:
    return line("write_events", {"stream_name": stream, "events": [EVENT] * count})


def lease(stream: str, limit: int = 100, lease_seconds: int = 30) -> bytes:
    body = {"stream_name": stream, "limit": limit, "lease_seconds": lease_seconds}
    return line("process_events", body)


def mark_events(ids: list[str], status: int = 1) -> bytes:
    return line("mark_events", {"event_ids": ids, "status": status})


def resp(*args: bytes | str) -> bytes:
    """One Redis command in RESP."""
    parts = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode() if isinstance(arg, str) else arg
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def xadd(key: str) -> bytes:
    """Redis's write_event: append the event to a stream, id chosen by Redis."""
    return resp("XADD", key, "*", "body", EVENT_JSON)
