"""The write answers, formatted directly, are the generic encoding byte for byte."""

from __future__ import annotations

import orjson
import pytest

from eventbus.records import Event, WriteAnswer, Written
from eventbus.responses import (
    event_json,
    ok_line,
    write_event_answer,
    write_events_answer,
    written_line,
    written_one_line,
)

T = 1_764_438_000_123_456

BODIES = [
    {"n": 1},
    'text with "quotes", a backslash \\ and a tab\t',
    {"unicode": "événement ✓ 事件 😀", "nested": {"list": [1, 2.5, None, True, {"deep": []}]}},
    [],
    0,
    -12345678901234567,
    "</script>\u2028",
]


@pytest.mark.parametrize("body", BODIES, ids=range(len(BODIES)))
@pytest.mark.parametrize("seq", [1, 2**62 + 7])
def test_written_one_line_is_the_generic_answer(body: object, seq: int) -> None:
    text = orjson.dumps(body).decode("utf-8")  # as bodies are stored
    event = Event(
        seq,
        "01a2289f-af40-7454-a111-645c68fa120e",
        "6ec3d84f-5023-4a16-a43f-3668abf2128c",
        0,
        T + seq % 1000,
        text,
        0,
        None,
        None,
    )
    direct = written_one_line(event)
    assert direct == ok_line("write_event", {"event": event_json(event)})
    assert orjson.loads(direct)["body"]["event"]["body"] == body


def test_written_line_is_the_generic_answer() -> None:
    # Runs of events that share their stream, status, time and deliveries,
    # and some that do not (a stream id with a % sign in it too).
    streams = ["6ec3d84f-5023-4a16-a43f-3668abf2128c", "100%-sure-%s-%d"]
    events = [
        Event(
            100 + n,
            f"01a2289f-af40-7454-a111-{n:012x}",
            streams[n // 4 % 2],
            n // 7 % 2,
            T + (n // 3),
            orjson.dumps(body).decode("utf-8"),
            n // 5 % 3,
            None,
            None,
        )
        for n, body in enumerate(BODIES * 3)
    ]
    direct = written_line(events)
    assert direct == ok_line("write_events", {"events": [event_json(e) for e in events]})
    assert [e["body"] for e in orjson.loads(direct)["body"]["events"]] == BODIES * 3


def test_the_write_answers_carry_their_line_and_counts() -> None:
    """What the writer renders: the answer line (a duplicate's says so) and
    the counts the server keeps."""
    events = [
        Event(
            n,
            f"01a2289f-af40-7454-a111-{n:012x}",
            "6ec3d84f-5023-4a16-a43f-3668abf2128c",
            0,
            T,
            "[]",
            0,
            None,
            None,
        )
        for n in (1, 2)
    ]
    first = write_event_answer(Written(events[:1], False))
    assert first == WriteAnswer(written_one_line(events[0]), 1, False)
    again = write_event_answer(Written(events[:1], True))
    assert again == WriteAnswer(
        ok_line("write_event", {"event": event_json(events[0]), "duplicate": True}), 1, True
    )
    assert write_events_answer(Written(events, False)) == WriteAnswer(written_line(events), 2, False)
