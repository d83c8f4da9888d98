"""BusProtocol unit tests: framing, response order, lanes, closing, limits.

The protocol is driven byte by byte through a StringTransport with a
task.Clock for time. Most tests use a scripted dispatcher whose requests
finish when the test says so; the framing tests use the real Dispatcher
over in-memory fakes of the services.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.main import CONNECTION_LOST
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from zope.interface import implementer
from zope.interface.verify import verifyObject

from eventbus import errors
from eventbus.auth import Authenticator
from eventbus.config import ClientConfig
from eventbus.interfaces import IDispatcher, IEvents, IStreams
from eventbus.operations import READ, WRITE, Dispatcher, Request
from eventbus.protocol import BusFactory, BusProtocol, Limits
from eventbus.records import Event, Marked, Page, Stream, Written

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
AUTH = {"client_id": "id", "client_secret": "secret"}
HEALTH = b'{"operation": "health"}'
HEALTH_OK = {"operation": "health", "status": True}


# -- a scripted dispatcher ------------------------------------------------------------


@implementer(IDispatcher)
class Script:
    """Request lines are ``lane:name`` (lane ``read``, ``write`` or ``now``)
    or ``exit``. Read and write requests answer when the test fires
    ``deferreds[name]``; ``now`` requests answer at once."""

    def __init__(self) -> None:
        self.deferreds: dict[str, Deferred] = {}
        self.started: list[str] = []
        self.cancelled: list[str] = []

    def prepare(self, line: bytes, memo: Any = None) -> Request:
        text = line.decode()
        if text == "exit":
            return Request("exit", None, True, lambda: b'{"exit": true}\n')
        lane, _, name = text.partition(":")
        if lane == "now":
            return Request(name, None, False, lambda: _answer(name))
        assert lane in (READ, WRITE), text

        def run() -> Deferred:
            self.started.append(name)
            d: Deferred = Deferred(lambda _: self.cancelled.append(name))
            self.deferreds[name] = d
            return d

        return Request(name, lane, False, run)

    def finish(self, *names: str) -> None:
        for name in names:
            self.deferreds[name].callback(_answer(name))


def _answer(name: str) -> bytes:
    return json.dumps({"done": name}).encode() + b"\n"


def connect(dispatcher: Any, **limits: Any) -> tuple[BusProtocol, StringTransport, Clock]:
    clock = Clock()
    factory = BusFactory(dispatcher, Limits(**limits), clock)
    proto = factory.buildProtocol(PEER)
    proto.callLater = clock.callLater  # TimeoutMixin's clock
    transport = StringTransport(peerAddress=PEER)
    proto.makeConnection(transport)
    return proto, transport, clock


def lines(transport: StringTransport) -> list[Any]:
    """The response lines written so far (each ends with exactly ``\\n``),
    decoded; the transport is cleared."""
    data = transport.value()
    transport.clear()
    if not data:
        return []
    assert data.endswith(b"\n")
    return [json.loads(chunk) for chunk in data[:-1].split(b"\n")]


def done(*names: str) -> list[dict[str, str]]:
    return [{"done": name} for name in names]


def send(proto: BusProtocol, *chunks: bytes) -> None:
    for chunk in chunks:
        proto.dataReceived(chunk)


# -- in-memory fakes of the services for the real Dispatcher -------------------------

STREAM = Stream(1, "00000000-0000-4000-8000-000000000001", "s", 1_700_000_000_000_000, None, None)


def _event(seq: int, body: str) -> Event:
    return Event(seq, f"e{seq}", STREAM.id, 0, STREAM.created_at, body, 0, None, None)


@implementer(IStreams)
class FakeStreams:
    def __init__(self) -> None:
        self.names = {"s"}

    def create(
        self, name: str, now: int, max_deliveries: int | None = None, retention_seconds: int | None = None
    ) -> Deferred:
        if name in self.names:
            return fail(errors.stream_exists(name))
        self.names.add(name)
        return succeed(STREAM._replace(name=name))

    def delete(self, name: str) -> Deferred:
        raise RuntimeError("boom: a bug in the service")

    def get(self, name: str) -> Deferred:
        return succeed(STREAM) if name in self.names else fail(errors.stream_not_found(name))

    def stats(self, name: str, now: int) -> Deferred:
        return fail(ValueError("storage exploded"))

    def list(self) -> Deferred:
        return succeed([STREAM])


@implementer(IEvents)
class FakeEvents:
    def __init__(self) -> None:
        self.written: list[str] = []

    def write(self, stream_name: str, bodies: list[str], now: int, key: str | None = None) -> Deferred:
        if stream_name != "s":
            return fail(errors.stream_not_found(stream_name))
        start = len(self.written)
        self.written += bodies
        return succeed(Written([_event(start + i + 1, b) for i, b in enumerate(bodies)], False))

    def write_then(
        self, stream_name: str, bodies: list[str], now: int, key: str | None, reply: Any, render: Any
    ) -> None:
        d = self.write(stream_name, bodies, now, key).addCallback(render)
        d.addErrback(lambda f: f.value).addCallback(reply)

    def read(self, stream_name: str, status: int | None, after_seq: int | None, limit: int) -> Deferred:
        events = [_event(i + 1, b) for i, b in enumerate(self.written)]
        return succeed(Page(STREAM, events, None))

    def lease(
        self, stream_name: str, status: int, after_seq: Any, limit: int, lease_seconds: int, now: int
    ) -> Any:
        return fail(errors.unavailable())

    def version(self, stream_name: str) -> int:
        return 0

    def wait(self, stream_name: str, since: int, timeout: float) -> Deferred:
        return succeed(False)

    def mark_one(
        self, event_id: str, status: int, lease_id: str | None, now: int, visible: Any = None
    ) -> Deferred:
        return fail(errors.event_not_found(event_id))

    def mark(
        self, event_ids: list[str], status: int, lease_id: str | None, now: int, visible: Any = None
    ) -> Deferred:
        return succeed(Marked(0, event_ids, [], []))

    def stop_waiting(self) -> None:
        pass


def real_dispatcher() -> Dispatcher:
    streams, events = FakeStreams(), FakeEvents()
    assert verifyObject(IStreams, streams) and verifyObject(IEvents, events)
    auth = Authenticator((ClientConfig("test", AUTH["client_id"], AUTH["client_secret"]),))
    return Dispatcher(streams, events, auth, Clock())


def request(operation: str, body: Any = None) -> bytes:
    req: dict[str, Any] = {"operation": operation, "auth": AUTH}
    if body is not None:
        req["body"] = body
    return json.dumps(req, ensure_ascii=False).encode()


def test_fakes_and_script_provide_their_interfaces() -> None:
    assert verifyObject(IDispatcher, Script())
    assert verifyObject(IDispatcher, real_dispatcher())
    assert verifyObject(IStreams, FakeStreams())
    assert verifyObject(IEvents, FakeEvents())


# -- framing ------------------------------------------------------------------------------


def test_line_split_across_many_chunks() -> None:
    proto, transport, _ = connect(real_dispatcher())
    data = HEALTH + b"\n"
    for i in range(len(data) - 1):
        proto.dataReceived(data[i : i + 1])
        assert transport.value() == b"", "answered before the line was complete"
    proto.dataReceived(data[-1:])
    assert lines(transport) == [HEALTH_OK]


def test_line_split_mid_utf8_character() -> None:
    proto, transport, _ = connect(real_dispatcher())
    data = request("write_event", {"stream_name": "s", "event": "naïve 名前 🙂"}) + b"\n"
    cut = data.index("🙂".encode()) + 2
    send(proto, data[:cut], data[cut:])
    [response] = lines(transport)
    assert response["body"]["event"]["body"] == "naïve 名前 🙂"


def test_several_lines_in_one_chunk_and_a_partial_tail() -> None:
    proto, transport, _ = connect(real_dispatcher())
    proto.dataReceived(HEALTH + b"\n" + HEALTH + b"\n" + b"garbage\n" + HEALTH[:5])
    assert lines(transport) == [HEALTH_OK, HEALTH_OK, _invalid_json()]
    proto.dataReceived(HEALTH[5:] + b"\n")
    assert lines(transport) == [HEALTH_OK]


def test_crlf_and_lf_endings_mixed() -> None:
    proto, transport, _ = connect(real_dispatcher())
    send(proto, HEALTH + b"\r\n" + HEALTH + b"\n" + HEALTH + b"\r", b"\n")
    data = transport.value()
    assert b"\r" not in data, "responses end with a bare \\n"
    assert lines(transport) == [HEALTH_OK] * 3


def test_blank_lines_are_ignored() -> None:
    proto, transport, clock = connect(real_dispatcher())
    send(proto, b"\n", b"\r\n", b"   \n", b"\t \r\n\n\n")
    assert transport.value() == b""
    send(proto, b"\n" + HEALTH + b"\n\n")
    assert lines(transport) == [HEALTH_OK]


def _invalid_json() -> dict[str, Any]:
    return {
        "operation": "decode_request",
        "status": False,
        "reason": "invalid json provided",
        "code": "invalid_json",
    }


@pytest.mark.parametrize(
    "garbage", [b"garbage", b"{", b"\xff\xfe", b"[1, 2]", b"null", b"\x00\x01", b"}{"], ids=repr
)
def test_garbage_is_answered_and_the_connection_stays(garbage: bytes) -> None:
    proto, transport, _ = connect(real_dispatcher())
    send(proto, garbage + b"\n" + HEALTH + b"\n")
    assert lines(transport) == [_invalid_json(), HEALTH_OK]
    assert not transport.disconnecting


def test_real_requests_through_the_dispatcher() -> None:
    proto, transport, _ = connect(real_dispatcher())
    send(
        proto,
        request("write_event", {"stream_name": "s", "event": {"a": [1, "ü"]}}) + b"\n",
        request("get_stream_events", {"stream_name": "s"}) + b"\n",
        request("create_stream", {"stream_name": "s"}) + b"\n",
        request("mark_event", {"event_id": "nope", "status": 1}) + b"\n",
    )
    write, read, exists, missing = lines(transport)
    assert write["body"]["event"]["body"] == {"a": [1, "ü"]}
    assert [e["body"] for e in read["body"]["events"]] == [{"a": [1, "ü"]}]
    assert exists["code"] == "stream_exists"
    assert missing == {
        "operation": "mark_event",
        "status": False,
        "reason": "event 'nope' not found",
        "code": "event_not_found",
    }


@pytest.mark.parametrize(
    ("operation", "body"),
    [("delete_stream", {"stream_name": "s"}), ("get_stream_info", {"stream_name": "s"})],
)
def test_unexpected_service_errors_are_answered_unavailable(operation: str, body: dict[str, Any]) -> None:
    """A bug below (raised, or a failed Deferred) reaches the client as
    ``unavailable``, never as a traceback, and the connection goes on."""
    proto, transport, _ = connect(real_dispatcher())
    send(proto, request(operation, body) + b"\n" + HEALTH + b"\n")
    response, health = lines(transport)
    assert response["operation"] == operation
    assert response["status"] is False and response["code"] == "unavailable"
    assert "boom" not in response["reason"] and "exploded" not in response["reason"]
    assert "Traceback" not in response["reason"]
    assert health == HEALTH_OK


# -- response order and lanes --------------------------------------------------------------


def test_responses_in_request_order_when_deferreds_fire_out_of_order() -> None:
    script = Script()
    proto, transport, _ = connect(script)
    send(proto, b"read:a\nread:b\nread:c\n")
    assert script.started == ["a", "b", "c"], "reads of one lane run together"
    script.finish("c")
    script.finish("b")
    assert transport.value() == b""
    script.finish("a")
    assert lines(transport) == done("a", "b", "c")


def test_immediate_answers_wait_their_turn() -> None:
    script = Script()
    proto, transport, _ = connect(script)
    send(proto, b"read:slow\nnow:quick\nnow:quick2\n")
    assert transport.value() == b""
    script.finish("slow")
    assert lines(transport) == done("slow", "quick", "quick2")


def test_partial_flush_stops_at_the_first_unanswered() -> None:
    script = Script()
    proto, transport, _ = connect(script)
    send(proto, b"read:a\nread:b\nread:c\n")
    script.finish("a")
    assert lines(transport) == done("a")
    script.finish("c")
    assert transport.value() == b""
    script.finish("b")
    assert lines(transport) == done("b", "c")


def test_a_write_waits_for_the_reads_before_it_and_reads_for_the_write() -> None:
    """Read-your-writes on one connection: lanes never overlap."""
    script = Script()
    proto, transport, _ = connect(script)
    send(proto, b"read:r1\nread:r2\nwrite:w1\nwrite:w2\nread:r3\n")
    assert script.started == ["r1", "r2"]
    script.finish("r2")
    assert script.started == ["r1", "r2"]
    script.finish("r1")
    assert script.started == ["r1", "r2", "w1", "w2"], "consecutive writes run together"
    script.finish("w1")
    assert "r3" not in script.started
    script.finish("w2")
    assert script.started[-1] == "r3"
    script.finish("r3")
    assert lines(transport) == done("r1", "r2", "w1", "w2", "r3")


def test_connection_lost_cancels_in_flight_and_writes_nothing_more() -> None:
    script = Script()
    proto, transport, _ = connect(script)
    send(proto, b"read:a\nwrite:b\n")
    proto.connectionLost(None)
    assert script.cancelled == ["a"]
    assert "b" not in script.started
    assert transport.value() == b""


# -- sending an awaited answer at once -------------------------------------------------


class SendingTransport(StringTransport):
    """A StringTransport with what the protocol sees of a TCP transport: a
    buffer of what was written and not yet sent (its length in
    ``_tempDataLen``, as Twisted keeps it), ``doWrite`` (the reactor's call
    when the socket can take data: counted, and it empties the buffer) and
    ``writeSomeData`` (a send on the socket: what it took is recorded in
    ``direct``; ``take`` limits it, or makes it fail)."""

    TLS = False

    def __init__(self) -> None:
        super().__init__(peerAddress=PEER)
        self.sent_now = 0
        self.direct: list[bytes] = []
        self.take: int | Exception | None = None
        self._tempDataLen = 0
        self.dataBuffer = b""

    def write(self, data: bytes) -> None:
        super().write(data)
        if "_tempDataLen" in vars(self):
            self._tempDataLen += len(data)

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))

    def doWrite(self) -> None:
        self.sent_now += 1
        self._tempDataLen = 0

    def writeSomeData(self, data: bytes) -> int | Exception:
        if isinstance(self.take, Exception):
            return self.take
        n = len(data) if self.take is None else self.take
        self.direct.append(data[:n])
        self.io.write(data[:n])
        return n


def connect_sending(script: Script) -> tuple[BusProtocol, SendingTransport]:
    factory = BusFactory(script, Limits(), Clock())
    proto = factory.buildProtocol(PEER)
    transport = SendingTransport()
    proto.makeConnection(transport)
    return proto, transport


def test_the_answer_nothing_waits_behind_goes_straight_to_the_socket() -> None:
    """Not through Twisted's buffer, which would register the socket for
    writing and then unregister it."""
    script = Script()
    proto, transport = connect_sending(script)
    send(proto, b"write:a\n")
    script.finish("a")
    assert lines(transport) == done("a")
    assert (len(transport.direct), transport._tempDataLen, transport.sent_now) == (1, 0, 0)


def test_an_answer_behind_buffered_ones_is_sent_after_them() -> None:
    script = Script()
    proto, transport = connect_sending(script)
    send(proto, b"write:a\nwrite:b\n")
    script.finish("a")
    assert (lines(transport), transport.sent_now) == (done("a"), 0), "b still pending: the reactor sends a"
    script.finish("b")
    # a is still in the buffer: b follows it there, and both are sent now.
    assert (lines(transport), transport.sent_now, transport.direct) == (done("b"), 1, [])

    proto, transport = connect_sending(script)
    transport.dataBuffer = b"part of an earlier answer"  # taken from the list, not all sent
    send(proto, b"write:c\n")
    script.finish("c")
    assert (lines(transport), transport.sent_now, transport.direct) == (done("c"), 1, [])


def test_what_the_socket_does_not_take_is_buffered_in_order() -> None:
    script = Script()
    proto, transport = connect_sending(script)
    transport.take = 5
    send(proto, b"write:a\n")
    script.finish("a")
    assert lines(transport) == done("a")  # the first 5 bytes sent, then the rest
    assert len(transport.direct[0]) == 5 and transport._tempDataLen > 0

    proto, transport = connect_sending(script)
    transport.take = CONNECTION_LOST  # the send failed: the reactor will meet it too
    send(proto, b"write:b\n")
    script.finish("b")
    assert (lines(transport), transport.direct, transport.sent_now) == (done("b"), [], 0)
    assert transport._tempDataLen > 0


def test_answers_given_while_reading_wait_for_the_reactors_turn() -> None:
    """Answered amid the lines of one chunk: one send for them all, later."""
    script = Script()
    proto, transport = connect_sending(script)
    send(proto, b"now:a\nnow:b\nnow:c\n")
    assert (lines(transport), transport.sent_now) == (done("a", "b", "c"), 0)


def test_no_send_at_once_on_a_closing_or_tls_transport() -> None:
    script = Script()
    proto, transport = connect_sending(script)
    send(proto, b"read:a\n")
    transport.disconnecting = True  # loseConnection: the reactor finishes the close
    script.finish("a")
    assert (lines(transport), transport.sent_now, transport.direct) == (done("a"), 0, [])

    proto, transport = connect_sending(script)
    transport.TLS = True  # TLS started on it: the TLS layer owns the sending
    send(proto, b"read:b\n")
    script.finish("b")
    assert (lines(transport), transport.sent_now, transport.direct) == (done("b"), 0, [])


class WrappingTransport:
    """A wrapper around a TCP transport, as TLS is: it forwards what it does
    not have to the transport beneath, and what is written to it goes
    through it (here, marked)."""

    def __init__(self, inner: SendingTransport) -> None:
        self.inner = inner
        self.disconnecting = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def write(self, data: bytes) -> None:
        self.inner.write(b"(" + data + b")")

    def writeSequence(self, seq: Any) -> None:
        self.write(b"".join(seq))


def test_an_answer_is_not_sent_past_a_wrapping_transport() -> None:
    script = Script()
    factory = BusFactory(script, Limits(), Clock())
    proto = factory.buildProtocol(PEER)
    inner = SendingTransport()
    proto.makeConnection(WrappingTransport(inner))
    send(proto, b"write:a\n")
    script.finish("a")
    assert inner.direct == [] and inner.value().startswith(b"(")


def test_without_twisteds_buffer_in_view_the_answer_is_written_then_sent() -> None:
    """A transport whose buffer the protocol cannot see (another Twisted):
    written, then sent at once by ``doWrite``, never straight past it."""
    script = Script()
    proto, transport = connect_sending(script)
    del transport._tempDataLen
    send(proto, b"write:a\n")
    script.finish("a")
    assert (lines(transport), transport.sent_now, transport.direct) == (done("a"), 1, [])


# -- exit and line_too_long close the connection -----------------------------------------------


def test_exit_answers_then_closes_and_ignores_the_rest() -> None:
    proto, transport, _ = connect(real_dispatcher())
    send(proto, HEALTH + b'\n{"operation": "exit"}\n' + HEALTH + b"\n")
    assert lines(transport) == [HEALTH_OK, {"operation": "exit", "status": True}]
    assert transport.disconnecting
    send(proto, HEALTH + b"\n")
    assert transport.value() == b""


def test_exit_waits_for_earlier_answers_before_closing() -> None:
    script = Script()
    proto, transport, _ = connect(script)
    send(proto, b"read:a\nexit\nread:never\n")
    assert not transport.disconnecting
    assert script.started == ["a"]
    script.finish("a")
    assert lines(transport) == [*done("a"), {"exit": True}]
    assert transport.disconnecting
    assert "never" not in script.started


def test_line_too_long_without_a_newline() -> None:
    proto, transport, _ = connect(real_dispatcher(), max_line_bytes=64)
    send(proto, b"x" * 40, b"x" * 40)
    [response] = lines(transport)
    assert response["operation"] == "decode_request"
    assert response["status"] is False and response["code"] == "line_too_long"
    assert "64" in response["reason"]
    assert transport.disconnecting
    send(proto, b"\n" + HEALTH + b"\n")
    assert transport.value() == b""


def test_line_too_long_with_a_newline_after_an_answered_one() -> None:
    proto, transport, _ = connect(real_dispatcher(), max_line_bytes=64)
    send(proto, HEALTH + b"\n" + b"y" * 65 + b"\n" + HEALTH + b"\n")
    first, too_long = lines(transport)
    assert first == HEALTH_OK
    assert too_long["code"] == "line_too_long"
    assert transport.disconnecting


def test_line_of_exactly_the_limit_is_served() -> None:
    line = HEALTH[:-1] + b" " * (64 - len(HEALTH)) + b"}"
    assert len(line) == 64
    proto, transport, _ = connect(real_dispatcher(), max_line_bytes=64)
    send(proto, line + b"\n")
    assert lines(transport) == [HEALTH_OK]
    assert not transport.disconnecting


def test_line_too_long_waits_for_earlier_answers() -> None:
    script = Script()
    proto, transport, _ = connect(script, max_line_bytes=32)
    send(proto, b"read:a\n" + b"z" * 40 + b"\n")
    assert transport.value() == b""
    script.finish("a")
    first, too_long = lines(transport)
    assert first == {"done": "a"}
    assert too_long["code"] == "line_too_long"
    assert transport.disconnecting


# -- limits: backpressure, idle timeout, connection count -------------------------------------------


def test_too_many_pending_requests_stops_reading_until_answered() -> None:
    script = Script()
    proto, transport, _ = connect(script, max_pending_requests=4)
    send(proto, b"read:a\nread:b\nread:c\nread:d\nread:e\n")
    assert transport.producerState == "paused"
    assert script.started == ["a", "b", "c", "d"], "read no further than the bound"
    script.finish("a", "b", "c")
    assert transport.producerState == "producing"
    assert script.started == ["a", "b", "c", "d", "e"]
    script.finish("d", "e")
    assert lines(transport) == done("a", "b", "c", "d", "e")


def test_a_peer_that_does_not_read_is_not_read_from() -> None:
    """The transport pauses us when its send buffer is full: take no more
    requests until it resumes us."""
    proto, transport, _ = connect(real_dispatcher())
    proto.pauseProducing()
    send(proto, HEALTH + b"\n" + HEALTH + b"\n")
    assert transport.value() == b""
    proto.resumeProducing()
    assert lines(transport) == [HEALTH_OK, HEALTH_OK]


def test_idle_connection_is_closed() -> None:
    proto, transport, clock = connect(real_dispatcher(), idle_timeout_seconds=60)
    clock.advance(59)
    send(proto, HEALTH + b"\n")
    clock.advance(59)
    assert not transport.disconnecting, "a request resets the idle timer"
    clock.advance(2)
    assert transport.disconnecting


def test_waiting_on_the_server_is_not_idleness() -> None:
    script = Script()
    proto, transport, clock = connect(script, idle_timeout_seconds=60)
    send(proto, b"read:slow\n")
    clock.advance(200)
    assert not transport.disconnecting
    script.finish("slow")
    assert lines(transport) == done("slow")
    clock.advance(61)
    assert transport.disconnecting


def test_connections_over_the_limit_are_refused() -> None:
    clock = Clock()
    factory = BusFactory(real_dispatcher(), Limits(max_connections=1), clock)
    first, second = StringTransport(peerAddress=PEER), StringTransport(peerAddress=PEER)
    factory.buildProtocol(PEER).makeConnection(first)
    factory.buildProtocol(PEER).makeConnection(second)
    assert not first.disconnecting
    [refused] = lines(second)
    assert refused["status"] is False and refused["code"] == "unavailable"
    assert second.disconnecting


# -- shutdown ------------------------------------------------------------------------------------


def test_stop_reading_answers_what_was_taken_and_takes_nothing_new() -> None:
    script = Script()
    proto, transport, _ = connect(script)
    send(proto, b"write:w\nread:r\n")
    drained = proto.factory.drained()
    proto.stop_reading()
    send(proto, b"read:late\n")
    assert "late" not in script.started
    script.finish("w")
    # The read blocked behind the write was taken before the stop: it runs,
    # and the drain waits for it.
    assert script.started == ["w", "r"]
    assert not drained.called
    script.finish("r")
    assert drained.called
    assert lines(transport) == done("w", "r")


def test_many_queued_requests_that_finish_at_once_do_not_recurse() -> None:
    """The first request is slow; 3,000 queue behind it in alternating lanes,
    each finishing synchronously when its turn comes (a refused storage call
    does): all must be answered, in order, without a RecursionError."""
    from twisted.internet.defer import Deferred, succeed
    from twisted.internet.testing import StringTransport

    from eventbus.operations import READ, WRITE, Request
    from eventbus.protocol import BusFactory, Limits

    slow: Deferred = Deferred()

    class _Dispatcher:
        n = 0

        def prepare(self, line: bytes, memo: Any = None) -> Request:
            self.n += 1
            answer = b'{"n":%d}\n' % self.n
            run = (lambda: slow) if self.n == 1 else (lambda: succeed(answer))
            return Request("op", READ if self.n % 2 else WRITE, False, run)

    factory = BusFactory(_Dispatcher(), Limits(max_pending_requests=10_000), Clock())  # type: ignore[arg-type]
    proto = factory.buildProtocol(None)
    transport = StringTransport()
    proto.makeConnection(transport)
    proto.dataReceived(b"{}\n" * 3001)
    assert transport.value() == b""
    slow.callback(b'{"n":1}\n')
    lines = transport.value().splitlines()
    assert lines == [b'{"n":%d}' % i for i in range(1, 3002)]
    assert factory.inflight == 0
