"""Connection life, flow control and limits of the protocol, unit by unit.

The real protocol, dispatcher, services and queries on a real SQLite file;
a fake clock and a StringTransport (see tests/hardening_support.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import fail, succeed

from eventbus.auth import FailureThrottle
from eventbus.bus import Events
from eventbus.operations import Dispatcher, Request
from tests.hardening_support import AUTH, Harness, check_response, logged_failures, request, responses

WRONG = {"client_id": AUTH["client_id"], "client_secret": "wrong"}


@pytest.fixture
def harness(tmp_path: Path) -> Iterator[Harness]:
    h = Harness(tmp_path, max_line_bytes=1024, max_pending_requests=10, idle_timeout_seconds=60)
    yield h
    h.close()


@pytest.fixture
def failures() -> Iterator[list[dict[str, Any]]]:
    """Log events that carry a failure (tracebacks), while the test runs."""
    with logged_failures() as seen:
        yield seen


def long_poll(stream: str, wait: float) -> bytes:
    return request("process_events", {"stream_name": stream, "wait_seconds": wait})


# -- line length ---------------------------------------------------------------------


def test_line_too_long_answers_and_closes(harness: Harness) -> None:
    proto, transport = harness.connect()
    proto.dataReceived(request("health", auth=None) + b"x" * 1500 + b"\n" + request("health", auth=None))
    out = responses(transport)
    assert [r["operation"] for r in out] == ["health", "decode_request"]
    assert out[1]["code"] == "line_too_long" and "1024" in out[1]["reason"]
    assert transport.disconnecting
    assert transport.producer is None  # a TLS transport closes only without one
    # Whatever still arrives while the transport closes (TLS reads on, for
    # the peer's close_notify) is dropped, not kept.
    for _ in range(100):
        proto.dataReceived(request("health", auth=None) * 500 + b"x" * 5000)
    assert responses(transport) == []
    assert len(proto._buffer) == 0


def test_line_too_long_with_newline_late_in_the_chunk(harness: Harness) -> None:
    proto, transport = harness.connect()
    proto.dataReceived(b"y" * 2000 + b"\n" + request("health", auth=None))
    out = responses(transport)
    assert [r.get("code") for r in out] == ["line_too_long"]
    assert transport.disconnecting


def test_line_too_long_behind_a_pending_request_reads_nothing_more(harness: Harness) -> None:
    proto, transport = harness.connect()
    proto.dataReceived(request("create_stream", {"stream_name": "s"}))
    responses(transport)
    proto.dataReceived(long_poll("s", 5))
    for _ in range(10):  # the client keeps sending, 64 KiB at a time
        if transport.producerState == "paused":
            break
        proto.dataReceived(b"z" * 65536)
    # The answer waits behind the long poll, but nothing more is read or kept.
    assert transport.producerState == "paused"
    assert len(proto._buffer) <= 2 * 1024 + 65536
    assert responses(transport) == []
    harness.clock.advance(5)
    out = responses(transport)
    assert [r["operation"] for r in out] == ["process_events", "decode_request"]
    assert out[0]["body"]["events"] == [] and out[1]["code"] == "line_too_long"
    assert transport.disconnecting


def test_buffer_stays_below_twice_the_limit_for_a_line_without_end(tmp_path: Path) -> None:
    limit = 64 * 1024
    h = Harness(tmp_path, max_line_bytes=limit)
    try:
        proto, transport = h.connect()
        biggest = 0
        chunk = b"a" * 65536
        # 100 MiB delivered, even after the close (a TCP transport would stop).
        for _ in range(1600):
            proto.dataReceived(chunk)
            biggest = max(biggest, len(proto._buffer))
        assert biggest <= 2 * limit
        assert [r["code"] for r in responses(transport)] == ["line_too_long"]
        assert transport.disconnecting
    finally:
        h.close()


# -- pending requests and output -------------------------------------------------------


def test_paused_while_too_many_requests_pending_then_resumed(harness: Harness) -> None:
    proto, transport = harness.connect()
    proto.dataReceived(request("create_stream", {"stream_name": "s"}))
    responses(transport)
    # A long poll holds the answers to everything behind it.
    proto.dataReceived(long_poll("s", 5) + request("health", auth=None) * 30)
    assert transport.producerState == "paused"
    assert len(proto._slots) == 10  # the limit; the rest is unread
    assert responses(transport) == []
    harness.clock.advance(5)
    out = responses(transport)
    assert [r["operation"] for r in out] == ["process_events"] + ["health"] * 30
    assert transport.producerState == "producing"


def test_paused_while_too_many_bytes_pending_then_resumed(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_pending_bytes=4096)
    try:
        proto, transport = h.connect()
        proto.dataReceived(request("create_stream", {"stream_name": "s"}))
        responses(transport)
        big = request("write_event", {"stream_name": "s", "event": "e" * 900})
        proto.dataReceived(long_poll("s", 5) + big * 20)
        # Writes wait behind the long poll (another lane); about 4 KiB of them
        # are taken, the rest is left unread.
        assert transport.producerState == "paused"
        assert 4 <= len(proto._slots) <= 6
        h.clock.advance(5)
        out = responses(transport)
        assert [r["operation"] for r in out] == ["process_events"] + ["write_event"] * 20
        assert all(r["status"] for r in out)
        assert transport.producerState == "producing"
        assert proto._pending_bytes == 0
    finally:
        h.close()


def test_paused_while_the_peer_does_not_read(harness: Harness) -> None:
    proto, transport = harness.connect()
    # The transport's send buffer is full: it pauses its producer, us.
    proto.pauseProducing()
    assert transport.producerState == "paused"
    proto.stop_reading()  # shutting down meanwhile
    proto.resumeProducing()  # the peer read; the shutdown still holds
    assert transport.producerState == "paused"


def test_output_resume_restarts_reading(harness: Harness) -> None:
    proto, transport = harness.connect()
    proto.pauseProducing()
    proto.resumeProducing()
    assert transport.producerState == "producing"
    proto.dataReceived(request("health", auth=None))
    assert [r["status"] for r in responses(transport)] == [True]


# -- idle connections ---------------------------------------------------------------


def test_idle_connection_is_closed(harness: Harness) -> None:
    proto, transport = harness.connect()
    harness.clock.advance(59)
    proto.dataReceived(request("health", auth=None))  # activity restarts the timer
    harness.clock.advance(59)
    assert not transport.disconnecting
    harness.clock.advance(1)
    assert transport.disconnecting and not transport.disconnected


def test_long_poll_is_not_idle(tmp_path: Path) -> None:
    h = Harness(tmp_path, idle_timeout_seconds=10)
    try:
        proto, transport = h.connect()
        proto.dataReceived(request("create_stream", {"stream_name": "s"}) + long_poll("s", 25))
        h.clock.advance(20)
        assert not transport.disconnecting
        h.clock.advance(5)
        assert [r["operation"] for r in responses(transport)] == ["create_stream", "process_events"]
        h.clock.advance(10)
        assert transport.disconnecting
    finally:
        h.close()


def test_idle_close_aborts_a_peer_that_does_not_let_go(harness: Harness) -> None:
    proto, transport = harness.connect()
    harness.clock.advance(60)
    assert transport.disconnecting and not transport.disconnected
    harness.clock.advance(proto.limits.abort_after_seconds)
    assert transport.disconnected  # abortConnection


def test_idle_close_aborts_at_once_when_output_is_stuck(harness: Harness) -> None:
    proto, transport = harness.connect()
    proto.pauseProducing()  # unsent output the peer never reads
    harness.clock.advance(60)
    assert transport.disconnected


def test_closed_connection_leaves_no_timer(harness: Harness) -> None:
    proto, transport = harness.connect()
    proto.dataReceived(request("exit", auth=None))
    assert transport.disconnecting
    proto.connectionLost(None)
    assert harness.clock.getDelayedCalls() == []


# -- connection limit ---------------------------------------------------------------------


def test_connections_over_the_limit_get_one_line_and_are_closed(tmp_path: Path) -> None:
    h = Harness(tmp_path, max_connections=2)
    try:
        first, _ = h.connect()
        h.connect()
        third, transport = h.connect()
        out = responses(transport)
        assert len(out) == 1 and out[0]["code"] == "unavailable" and out[0]["status"] is False
        assert transport.disconnecting
        third.dataReceived(request("health", auth=None))
        assert responses(transport) == []
        third.connectionLost(None)
        first.connectionLost(None)
        fourth, transport = h.connect()
        fourth.dataReceived(request("health", auth=None))
        assert responses(transport) == [{"operation": "health", "status": True}]
    finally:
        h.close()


# -- unexpected failures are answered -----------------------------------------------------


class FailingEvents(Events):
    """The real service, with its calls broken in three different ways."""

    def write_then(self, *args: Any, **kw: Any) -> Any:
        raise RuntimeError("injected: write raised")

    def read(self, *args: Any, **kw: Any) -> Any:
        return fail(RuntimeError("injected: read failed"))

    def lease(self, *args: Any, **kw: Any) -> Any:
        return succeed(object())  # a result that cannot be turned into a response


def test_unexpected_exceptions_are_logged_and_answered(
    harness: Harness, failures: list[dict[str, Any]]
) -> None:
    events = FailingEvents(harness.db, harness.events.notifier)
    harness.factory.dispatcher = Dispatcher(
        harness.streams, events, harness.dispatcher.authenticator, harness.clock
    )
    proto, transport = harness.connect()
    proto.dataReceived(
        request("create_stream", {"stream_name": "s"})
        + request("write_event", {"stream_name": "s", "event": {"n": 1}})
        + request("get_stream_events", {"stream_name": "s"})
        + request("process_events", {"stream_name": "s", "lease_seconds": 30})
        + request("health", auth=None)
    )
    out = responses(transport)
    for r in out:
        check_response(r)
    assert [(r["operation"], r["status"], r.get("code")) for r in out] == [
        ("create_stream", True, None),
        ("write_event", False, "unavailable"),
        ("get_stream_events", False, "unavailable"),
        ("process_events", False, "unavailable"),
        ("health", True, None),
    ]
    tracebacks = [e["log_failure"].getTraceback() for e in failures]
    assert len(tracebacks) == 3
    assert any("injected: write raised" in t for t in tracebacks)
    assert any("injected: read failed" in t for t in tracebacks)
    assert not transport.disconnecting
    assert harness.factory.inflight == 0


class BrokenDispatcher:
    """A dispatcher with bugs: prepare raises, or a request's run raises."""

    def prepare(self, line: bytes, memo: Any = None) -> Request:
        if b"boom" in line:
            raise ValueError("injected: prepare raised")

        def run() -> bytes:
            raise ValueError("injected: run raised")

        return Request("write_event", "write", False, run)


def test_a_broken_dispatcher_still_answers_every_line(
    harness: Harness, failures: list[dict[str, Any]]
) -> None:
    harness.factory.dispatcher = BrokenDispatcher()  # type: ignore[assignment]
    proto, transport = harness.connect()
    proto.dataReceived(b"boom\n{}\nboom\n")
    out = responses(transport)
    assert [(r["operation"], r["code"]) for r in out] == [
        ("decode_request", "unavailable"),
        ("write_event", "unavailable"),
        ("decode_request", "unavailable"),
    ]
    assert len(failures) == 3
    assert harness.factory.inflight == 0


# -- auth failures are slowed down ---------------------------------------------------------


def test_throttle_delays_grow_and_are_capped() -> None:
    from twisted.internet.task import Clock

    clock = Clock()
    throttle = FailureThrottle(clock, free=3, base=0.1, cap=1.0, forget_after=60)
    delays = [throttle.failed("a") for _ in range(9)]
    assert delays == [0, 0, 0, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]
    assert throttle.failed("b") == 0  # per address
    clock.advance(59)
    assert throttle.failed("a") == 1.0  # still remembered
    clock.advance(60)
    assert throttle.failed("a") == 0  # forgotten after a quiet minute


def test_throttle_remembers_a_bounded_number_of_addresses() -> None:
    from twisted.internet.task import Clock

    throttle = FailureThrottle(Clock(), max_addresses=100)
    for i in range(1000):
        throttle.failed(f"10.0.{i // 256}.{i % 256}")
    assert len(throttle._failures) == 100
    assert throttle.failures("10.0.3.231") == 1  # the most recent are kept


def test_repeated_auth_failures_are_answered_later(harness: Harness) -> None:
    proto, transport = harness.connect("10.1.1.1")
    for _ in range(harness.throttle.free):
        proto.dataReceived(request("health", auth=None) + request("list_streams", {}, auth=WRONG))
    assert [r.get("code") for r in responses(transport)] == [None, "unauthorized"] * harness.throttle.free
    proto.dataReceived(request("list_streams", {}, auth=WRONG) + request("health", auth=None))
    # Held back, and nothing more read from this connection meanwhile...
    assert responses(transport) == []
    assert transport.producerState == "paused"
    # ...while the real client at the same address is served at once...
    real, real_transport = harness.connect("10.1.1.1")
    real.dataReceived(request("list_streams", {}))
    assert [r["status"] for r in responses(real_transport)] == [True]
    # ...and so is a first failure from elsewhere.
    other, other_transport = harness.connect("10.2.2.2")
    other.dataReceived(request("list_streams", {}, auth=WRONG))
    assert [r["code"] for r in responses(other_transport)] == ["unauthorized"]
    harness.clock.advance(harness.throttle.base * 0.99)
    assert responses(transport) == []
    harness.clock.advance(harness.throttle.base * 0.02)
    assert [r.get("code") for r in responses(transport)] == ["unauthorized", None]
    assert transport.producerState == "producing"
    # The next failure waits twice as long.
    proto.dataReceived(request("list_streams", {}, auth=WRONG))
    harness.clock.advance(harness.throttle.base * 1.5)
    assert responses(transport) == []
    harness.clock.advance(harness.throttle.base)
    assert [r["code"] for r in responses(transport)] == ["unauthorized"]


def test_delayed_answer_of_a_vanished_client_leaves_nothing(harness: Harness) -> None:
    proto, transport = harness.connect()
    proto.dataReceived(request("list_streams", {}, auth=WRONG) * (harness.throttle.free + 1))
    assert harness.factory.inflight == 1
    proto.connectionLost(None)
    assert harness.factory.inflight == 0
    assert harness.clock.getDelayedCalls() == []


# -- shutdown drain ---------------------------------------------------------------------------


def test_drain_waits_for_requests_queued_behind_others(harness: Harness) -> None:
    proto, transport = harness.connect()
    proto.dataReceived(request("create_stream", {"stream_name": "s"}))
    responses(transport)
    # A read (long poll) runs; a write waits for its lane.
    proto.dataReceived(long_poll("s", 3) + request("write_event", {"stream_name": "s", "event": 1}))
    proto.stop_reading()
    drained = harness.factory.drained()
    seen: list[list[str]] = []
    drained.addCallback(lambda _: seen.append([r["operation"] for r in responses(transport)]))
    assert not seen
    harness.clock.advance(3)
    # When the drain fires, the write that was queued has been answered too.
    assert seen == [["process_events", "write_event"]]


def test_all_closed_fires_when_the_last_connection_goes(harness: Harness) -> None:
    a, _ = harness.connect()
    b, _ = harness.connect()
    closed = harness.factory.all_closed()
    fired: list[bool] = []
    closed.addCallback(lambda _: fired.append(True))
    a.close()
    a.connectionLost(None)
    assert not fired
    b.connectionLost(None)
    assert fired
