"""Durability across restarts: SIGTERM (graceful) and kill -9 (crash).

Every test runs its own server on its own database file, stops it, starts a
new process on the same file, and checks that everything acknowledged is
there, exactly as it was acknowledged.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.busclient import DEFAULT_AUTH, LineClient
from tests.servers import ServerProcess

#: twistd re-raises the signal it stopped on, so a graceful SIGTERM stop
#: exits with -SIGTERM; 0 is fine too.
GRACEFUL_EXIT = (0, -15)


@pytest.fixture
def proc(tmp_path: Path) -> Iterator[ServerProcess]:
    p = ServerProcess(tmp_path / "srv").start()
    yield p
    p.stop()


def request_line(operation: str, body: Any) -> bytes:
    return json.dumps({"operation": operation, "auth": DEFAULT_AUTH, "body": body}).encode() + b"\n"


def snapshot(port: int) -> dict[str, Any]:
    """Everything a client can see: every stream and every event."""
    with LineClient(port) as c:
        streams = c.call("list_streams")["streams"]
        return {
            s["name"]: {
                "info": c.call("get_stream_info", {"stream_name": s["name"]}),
                "events": c.call("get_stream_events", {"stream_name": s["name"]})["events"],
            }
            for s in streams
        }


def populate(c: LineClient) -> None:
    """Streams and events in every state the original protocol can make."""
    c.call("create_stream", {"stream_name": "orders"})
    values = [{"id": 1}, ["ü", "名前", "🙂"], "text", 3.25, True, False, 0, {"deep": {"a": [1, {"b": None}]}}]
    ids = [c.call("write_event", {"stream_name": "orders", "event": v})["event"]["id"] for v in values]
    c.call("mark_event", {"event_id": ids[0], "status": 1})
    c.call("mark_event", {"event_id": ids[1], "status": 2})
    c.call("mark_event", {"event_id": ids[2], "status": 3})
    c.call("create_stream", {"stream_name": "batch", "max_deliveries": 3, "retention_seconds": 3600})
    c.call("write_events", {"stream_name": "batch", "events": list(range(25))})
    c.call("create_stream", {"stream_name": "gone"})
    gone = c.call("write_event", {"stream_name": "gone", "event": 1})["event"]["id"]
    c.call("delete_stream", {"stream_name": "gone"})
    c.call("create_stream", {"stream_name": "empty"})
    c.call("write_event", {"stream_name": "orders", "event": {"key": 1}, "key": "order-1"})
    c.call("mark_events", {"event_ids": [ids[3], ids[4], gone], "status": 1})


def check_after_restart(port: int, before: dict[str, Any]) -> None:
    assert snapshot(port) == before
    with LineClient(port) as c:
        assert c.request("get_stream_info", {"stream_name": "gone"})["code"] == "stream_not_found"
        # The sequence goes on where it stopped: new events sort after old ones.
        last = max(e["seq"] for e in before["orders"]["events"])
        assert c.call("write_event", {"stream_name": "orders", "event": "after"})["event"]["seq"] > last
        # Idempotency keys survive too.
        again = c.call("write_event", {"stream_name": "orders", "event": {"key": 2}, "key": "order-1"})
        assert again["duplicate"] is True and again["event"]["body"] == {"key": 1}


def test_sigterm_then_restart_keeps_everything(proc: ServerProcess) -> None:
    with LineClient(proc.port) as c:
        populate(c)
    before = snapshot(proc.port)
    assert set(before) == {"orders", "batch", "empty"}
    assert proc.terminate() in GRACEFUL_EXIT
    log = proc.log_text()
    assert "database closed" in log
    assert "Traceback" not in log
    # Closed cleanly: the last connection checkpointed and removed the WAL.
    wal = proc.workdir / "eventbus.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    proc.start()
    check_after_restart(proc.port, before)


def test_kill_9_then_restart_keeps_everything_acknowledged(proc: ServerProcess) -> None:
    with LineClient(proc.port) as c:
        populate(c)
    before = snapshot(proc.port)
    proc.kill()
    assert proc.proc is not None and proc.proc.returncode == -9
    proc.start()
    check_after_restart(proc.port, before)


def test_kill_9_mid_pipeline_keeps_every_acknowledged_write(proc: ServerProcess) -> None:
    """Kill while writes are still arriving: every acknowledged write is
    there, and what is there is a prefix of what was sent (no holes, no
    half-written batch)."""
    sent, read = 600, 200
    with LineClient(proc.port) as c:
        c.call("create_stream", {"stream_name": "s"})
        c.send_raw(
            b"".join(request_line("write_event", {"stream_name": "s", "event": n}) for n in range(sent))
        )
        acked = [c.read()["body"]["event"] for _ in range(read)]
        proc.kill()
    assert [e["body"] for e in acked] == list(range(read))
    proc.start()
    with LineClient(proc.port) as c:
        events = c.call("get_stream_events", {"stream_name": "s"})["events"]
    bodies = [e["body"] for e in events]
    assert bodies == list(range(len(bodies))), "events missing from the middle"
    assert len(bodies) >= read
    assert events[:read] == [{**e} for e in acked]


def test_kill_9_keeps_acknowledged_marks_and_deletes(proc: ServerProcess) -> None:
    with LineClient(proc.port) as c:
        c.call("create_stream", {"stream_name": "m"})
        events = c.call("write_events", {"stream_name": "m", "events": list(range(40))})["events"]
        for k, e in enumerate(events):
            c.call("mark_event", {"event_id": e["id"], "status": k % 3})
        c.call("create_stream", {"stream_name": "d"})
        c.call("delete_stream", {"stream_name": "d"})
        proc.kill()
    proc.start()
    with LineClient(proc.port) as c:
        after = c.call("get_stream_events", {"stream_name": "m"})["events"]
        assert [(e["id"], e["status"]) for e in after] == [(e["id"], k % 3) for k, e in enumerate(events)]
        assert [e["id"] for e in c.call("retry_events", {"stream_name": "m"})["events"]] == [
            e["id"] for k, e in enumerate(events) if k % 3 == 2
        ]
        assert c.request("get_stream_info", {"stream_name": "d"})["code"] == "stream_not_found"


def test_sigterm_answers_in_flight_requests(proc: ServerProcess) -> None:
    """SIGTERM with a long pipeline in flight: every request the server had
    taken is answered (not refused), then the connection closes; after a
    restart exactly the acknowledged writes are there."""
    pairs = 400
    with LineClient(proc.port, timeout=30) as c:
        c.call("create_stream", {"stream_name": "s"})
        # Writes and reads alternate, so most requests wait behind another.
        c.send_raw(
            b"".join(
                request_line("write_event", {"stream_name": "s", "event": n})
                + request_line("get_stream_info", {"stream_name": "s"})
                for n in range(pairs)
            )
        )
        responses = [c.read()]  # the server is at work on the pipeline
        assert proc.proc is not None
        proc.proc.send_signal(15)
        while True:
            try:
                responses.append(c.read())
            except ConnectionError:
                break
    assert proc.proc.wait(30) in GRACEFUL_EXIT
    refused = [r for r in responses if not r["status"]]
    assert refused == [], f"{len(refused)} taken requests refused at shutdown, e.g. {refused[:1]}"
    expected_ops = ["write_event", "get_stream_info"] * pairs
    assert [r["operation"] for r in responses] == expected_ops[: len(responses)]
    acked = [r["body"]["event"]["body"] for r in responses if r["operation"] == "write_event"]
    assert acked == list(range(len(acked)))
    proc.start()
    with LineClient(proc.port) as c:
        present = [e["body"] for e in c.call("get_stream_events", {"stream_name": "s"})["events"]]
    assert present == acked


def test_sigterm_ends_long_polls_with_an_answer(proc: ServerProcess) -> None:
    """A held long poll does not hold up shutdown: it is answered (empty) at
    once, not when its 30 s are up (the read below gives up after 15)."""
    with LineClient(proc.port, timeout=15) as c:
        c.call("create_stream", {"stream_name": "p"})
        c.send_raw(request_line("process_events", {"stream_name": "p", "wait_seconds": 30}))
        # A round trip on another connection: the poll has been taken by now.
        with LineClient(proc.port) as other:
            assert other.call("get_stream_info", {"stream_name": "p"})["stream"]["name"] == "p"
        assert proc.proc is not None
        proc.proc.send_signal(15)
        assert c.read() == {
            "operation": "process_events",
            "status": True,
            "body": {"events": [], "next_after_seq": None},
        }
        assert c.is_closed()
    assert proc.proc.wait(30) in GRACEFUL_EXIT
