"""The wire: newline-delimited JSON over a stream transport.

One :class:`BusProtocol` per connection. It frames lines, hands each to the
dispatcher, and writes the responses back in request order however the
requests finish. It keeps a connection's effects in order too: requests run
in *lanes* (reads, writes); consecutive requests of one lane run together
(pipelined writes share one group commit), and a request of the other lane
waits until those before it are answered, so a client always reads its own
writes. It stops reading from a client that does not read its responses or
has too many requests (or bytes of them) pending, holds back the answers to
repeated auth failures from one address, closes idle connections (aborting
those that will not close), refuses connections over the limit, and answers
every line even when something below it fails unexpectedly.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from eventbus import errors
from eventbus.auth import AuthMemo, FailureThrottle
from eventbus.operations import Dispatcher, Request, answered
from eventbus.responses import Unanswered, error_line

# Pause reasons: a paused connection reads nothing until all are gone.
_OUTPUT, _PENDING, _SHUTDOWN = "output", "pending", "shutdown"
# Closing (line_too_long, exit): nothing more will be read, so read nothing.
_CLOSING = "closing"
# An auth failure's answer is being delayed: read nothing more until it is sent.
_THROTTLED = "throttled"


@dataclass(frozen=True)
class Limits:
    max_line_bytes: int = 1024 * 1024
    max_pending_requests: int = 1000
    max_pending_bytes: int = 64 * 1024 * 1024
    idle_timeout_seconds: float = 300
    max_connections: int = 10_000
    abort_after_seconds: float = 10


class _Slot:
    """One request's place in the response order."""

    __slots__ = ("line", "closes", "size")

    def __init__(self, closes: bool, size: int = 0) -> None:
        self.line: bytes | None = None
        self.closes = closes
        self.size = size  # of the request line, counted while it is pending


class BusProtocol(LineReceiver, TimeoutMixin):
    delimiter = b"\n"
    log = Logger()

    def __init__(self, factory: BusFactory) -> None:
        self.factory = factory
        self.dispatcher = factory.dispatcher
        self.limits = factory.limits
        self.MAX_LENGTH = self.limits.max_line_bytes
        self._slots: deque[_Slot] = deque()
        self._blocked: deque[tuple[_Slot, Request]] = deque()
        self._inflight: set[Deferred] = set()
        self._running = 0
        self._lane: str | None = None
        self._pauses: set[str] = set()
        self._closing = False
        self._lost = False
        self._peer = "?"
        self._abort_call: IDelayedCall | None = None
        self._delayed: set[IDelayedCall] = set()
        self._producing = False  # registered as the transport's producer
        self._pending_bytes = 0  # request bytes not yet answered
        self._starting = False  # inside _start_blocked
        self._receiving = False  # inside dataReceived
        self._auth_memo = AuthMemo()
        # TimeoutMixin's clock: the factory's reactor (a Clock in unit tests).
        self.callLater = factory.reactor.callLater
        # Activity is stamped, not pushed into the timer at every line: the
        # timer, when it fires, checks the stamp and waits out the rest.
        self._seconds = factory.reactor.seconds
        self._last_active = 0.0

    # -- connection life -----------------------------------------------------

    def connectionMade(self) -> None:
        if len(self.factory.connections) >= self.limits.max_connections:
            self.transport.write(
                error_line("decode_request", errors.unavailable("too many connections; try again later"))
            )
            self._closing = True
            self.transport.loseConnection()
            return
        self.factory.connections.add(self)
        peer = self.transport.getPeer()
        self._peer = str(getattr(peer, "host", peer))
        self.transport.registerProducer(self, True)
        self._producing = True
        self._last_active = self._seconds()
        self.setTimeout(self.limits.idle_timeout_seconds)

    def connectionLost(self, reason: Any = None) -> None:
        self._lost = True
        self.setTimeout(None)
        if self._abort_call is not None and self._abort_call.active():
            self._abort_call.cancel()
        for call in list(self._delayed):
            call.cancel()
            self.factory.request_done()
        self._delayed.clear()
        for d in list(self._inflight):
            d.cancel()
        self._slots.clear()
        self._blocked.clear()
        self.factory.forget(self)

    def timeoutConnection(self) -> None:
        timeout = self.limits.idle_timeout_seconds
        if self._slots:
            # Waiting on us (a long poll, a slow commit) is not idleness.
            # Start a new period: resetTimeout() is a no-op once timed out.
            self.setTimeout(timeout)
            return
        idle = self._seconds() - self._last_active
        if idle < timeout:
            self.setTimeout(timeout - idle)
            return
        self.close()

    def close(self, abort_if_blocked: bool = True) -> None:
        """Close politely; abort if the peer does not let us finish.

        With ``abort_if_blocked``, a peer that is not reading what we already
        sent (the transport has paused us) is aborted at once; otherwise it
        gets ``abort_after_seconds`` to read it.
        """
        self._closing = True
        if self._lost:
            return
        if abort_if_blocked and _OUTPUT in self._pauses:
            self.transport.abortConnection()
            return
        if self._abort_call is not None:
            return
        # Read again (whatever arrives is dropped): TLS must read the peer's
        # close_notify to finish closing. A TCP transport reads no more anyway.
        if self._pauses:
            self._pauses.clear()
            LineReceiver.resumeProducing(self)
        if self._producing:
            # A TLS transport starts closing only once no producer is registered.
            self._producing = False
            self.transport.unregisterProducer()
        self.transport.loseConnection()
        self._abort_call = self.callLater(self.limits.abort_after_seconds, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self._lost:
            self.transport.abortConnection()

    # -- input ---------------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if self._closing:
            # Nothing more will be answered, so nothing more is kept (a TLS
            # transport goes on delivering while it waits for close_notify).
            self.clearLineBuffer()
            return
        self._receiving = True
        try:
            LineReceiver.dataReceived(self, data)
        finally:
            self._receiving = False

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line or line.isspace():  # blank lines are ignored (no copy of the line)
            return
        self._last_active = self._seconds()
        try:
            request = self.dispatcher.prepare(line, self._auth_memo)
        except Exception:
            self.log.failure("request could not be prepared")
            request = _unavailable("decode_request")
        slot = _Slot(request.closes, len(line))
        self._slots.append(slot)
        self._pending_bytes += slot.size
        if request.closes:
            self._closing = True
            self._pause(_CLOSING)
        if request.lane is None:
            delay = self._auth_delay(request)
            if delay > 0:
                self._answer_later(slot, request.run(), delay)
            else:
                slot.line = request.run()
                self._flush()
        elif not self._blocked and (self._running == 0 or request.lane == self._lane):
            self._start(slot, request)
        else:
            self._blocked.append((slot, request))
        if (
            len(self._slots) >= self.limits.max_pending_requests
            or self._pending_bytes >= self.limits.max_pending_bytes
        ):
            self._pause(_PENDING)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.clearLineBuffer()
        if self._closing:
            return
        slot = _Slot(True)
        slot.line = error_line("decode_request", errors.line_too_long(self.MAX_LENGTH))
        self._slots.append(slot)
        self._closing = True
        # Whatever else the peer sends is dropped: stop reading it at all.
        self._pause(_CLOSING)
        self._flush()

    # -- slowing down auth failures ------------------------------------------

    def _auth_delay(self, request: Request) -> float:
        """The delay for this answer; every auth failure is logged, the
        first ones from an address too (a slow guesser leaves a trace)."""
        if request.code != "unauthorized":
            return 0.0
        throttle = self.factory.throttle
        delay = throttle.failed(self._peer) if throttle is not None else 0.0
        self.log.info("auth failure from {peer}: answer delayed {delay:.1f}s", peer=self._peer, delay=delay)
        return delay

    def _answer_later(self, slot: _Slot, line: bytes, delay: float) -> None:
        """Hold an answer for ``delay`` seconds without holding anyone else."""
        self._pause(_THROTTLED)
        self.factory.inflight += 1

        def answer() -> None:
            self._delayed.discard(call)
            slot.line = line
            if not self._delayed:
                self._resume(_THROTTLED)
            self._flush()
            # Last, so a shutdown waiting for the drain sees the answer sent.
            self.factory.request_done()

        call = self.callLater(delay, answer)
        self._delayed.add(call)

    # -- running requests in lanes ---------------------------------------------

    def _start(self, slot: _Slot, request: Request) -> None:
        self._running += 1
        self._lane = request.lane
        self.factory.inflight += 1
        try:
            result = request.run(partial(self._answered, slot) if request.answers else None)
        except Exception:
            self.log.failure("operation {operation} failed", operation=request.operation)
            result = _unavailable_line(request.operation)
        if result is None:
            return  # it answers through _answered (it may have already)
        if isinstance(result, bytes):
            self._finished(result, slot, None)
            return
        self._inflight.add(result)
        # Whatever went wrong below, the request is answered.
        args = (slot, result, request)
        result.addCallbacks(self._verdict, self._crashed, callbackArgs=args, errbackArgs=args)

    def _answered(self, slot: _Slot, line: bytes) -> None:
        """A request that answers (the write path): its line has come."""
        self._finished(line, slot, None)

    def _crashed(self, failure: Failure, slot: _Slot, d: Deferred, request: Request) -> None:
        """A bug below the dispatcher: logged, and answered ``unavailable``."""
        self.log.failure("operation {operation} failed", failure, operation=request.operation)
        self._verdict(_unavailable_line(request.operation), slot, d, request)

    def _verdict(self, line: bytes, slot: _Slot, d: Deferred, request: Request) -> None:
        """A request that ran: an ``unauthorized`` found while running (a
        hashed secret verified in a thread) is slowed down like any other."""
        delay = self._auth_delay(request) if request.code == "unauthorized" and not self._lost else 0.0
        if delay <= 0:
            self._finished(line, slot, d)
            return
        self._inflight.discard(d)
        self._pause(_THROTTLED)

        def answer() -> None:
            self._delayed.discard(call)
            if not self._delayed:
                self._resume(_THROTTLED)
            self._finished(line, slot, None)

        call = self.callLater(delay, answer)
        self._delayed.add(call)

    def _finished(self, line: bytes, slot: _Slot, d: Deferred | None) -> None:
        if d is not None:
            self._inflight.discard(d)
        if not self._lost:
            if isinstance(line, Unanswered):
                slot.closes = True  # after the answers before it (errors.OutcomeUnknown)
            slot.line = line
            self._running -= 1
            self._start_blocked()
            self._flush()
        # Last, so a shutdown waiting for the drain counts the requests just started.
        self.factory.request_done()

    def _start_blocked(self) -> None:
        """Start the waiting requests whose turn has come, in one flat loop: a
        request that finishes at once calls back in here, and must not start
        the next one from inside itself (hundreds deep, it would overflow)."""
        if self._starting:
            return
        self._starting = True
        try:
            while self._blocked and (self._running == 0 or self._blocked[0][1].lane == self._lane):
                self._start(*self._blocked.popleft())
        finally:
            self._starting = False

    # -- output --------------------------------------------------------------------

    def _flush(self) -> None:
        out = []
        close = False
        slots = self._slots
        while slots and slots[0].line is not None:
            slot = slots.popleft()
            self._pending_bytes -= slot.size
            out.append(slot.line)
            if slot.closes:
                close = True
                break
        if out and not self._lost:
            if not slots and not close and not self._receiving:
                self._send_now(out)
            else:
                self.transport.writeSequence(out)
            # Answering is activity: the idle clock starts again from here.
            self._last_active = self._seconds()
        if close:
            self._slots.clear()
            self._blocked.clear()
            self._pending_bytes = 0
            self.close()
        elif (
            _PENDING in self._pauses
            and len(slots) < self.limits.max_pending_requests // 2
            and self._pending_bytes < self.limits.max_pending_bytes // 2
        ):
            self._resume(_PENDING)

    def _send_now(self, out: list[bytes]) -> None:
        """Send answers the client waits for now, not on the reactor's next turn.

        Twisted sends a write once the reactor next polls the socket; an
        answer the client waits for (nothing else pending on the connection,
        not amid reading its lines, where one send per chunk is better) goes
        out at once: bench.compare x1.1 at 64 x 1 and 64 x 16. Only on a
        plain TCP transport still open. When nothing of ours waits in its
        buffer, straight to the socket: handed to ``write`` first, it would
        register the socket for writing and, once sent, unregister it, two
        system calls per answer (64 x 1 x1.27). What the socket does not
        take, and all of it if the send fails, goes to ``write``: the
        reactor sends the rest, or meets the failure on its next turn as it
        would have anyway.
        """
        transport = self.transport
        if getattr(transport, "TLS", False) or transport.disconnecting or not hasattr(transport, "doWrite"):
            transport.writeSequence(out)
            return
        # Twisted's buffer, seen through tcp.Connection's own fields (Twisted
        # is pinned in requirements.txt); where they are missing, the answer
        # takes the slower way, never past what waits in the buffer. Its own:
        # a wrapper (TLS) forwards lookups to the TCP transport beneath it,
        # whose socket must not be written to past the wrapper.
        if vars(transport).get("_tempDataLen") == 0 and not transport.dataBuffer and transport.connected:
            data = out[0] if len(out) == 1 else b"".join(out)
            sent = transport.writeSomeData(data)
            if isinstance(sent, int):
                if sent < len(data):
                    transport.write(data[sent:])
                return
            transport.writeSequence(out)
            return
        transport.writeSequence(out)
        transport.doWrite()

    # -- flow control ----------------------------------------------------------------
    # The transport calls pauseProducing/resumeProducing (we are registered as
    # its producer) when its send buffer fills and drains.

    def pauseProducing(self) -> None:
        self._pause(_OUTPUT)

    def resumeProducing(self) -> None:
        self._resume(_OUTPUT)

    def stopProducing(self) -> None:
        self._pause(_SHUTDOWN)

    def _pause(self, reason: str) -> None:
        if not self._pauses:
            LineReceiver.pauseProducing(self)
        self._pauses.add(reason)

    def _resume(self, reason: str) -> None:
        if reason not in self._pauses:
            return
        self._pauses.discard(reason)
        if not self._pauses and not self._lost:
            LineReceiver.resumeProducing(self)

    def stop_reading(self) -> None:
        """Shutting down: take no new requests; answer those already taken."""
        self._pause(_SHUTDOWN)


class BusFactory(Factory):
    """Shared state of all connections: the dispatcher, limits, counts."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        limits: Limits,
        reactor: Any,
        throttle: FailureThrottle | None = None,
    ) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        self.reactor = reactor
        self.throttle = throttle
        self.connections: set[BusProtocol] = set()
        self.inflight = 0
        self._drained: list[Deferred] = []
        self._closed: list[Deferred] = []

    def buildProtocol(self, addr: Any) -> BusProtocol:
        return BusProtocol(self)

    def request_done(self) -> None:
        self.inflight -= 1
        if self.inflight == 0 and self._drained:
            waiting, self._drained = self._drained, []
            for d in waiting:
                d.callback(None)

    def drained(self) -> Deferred:
        """Fires when no request is in flight on any connection."""
        if self.inflight == 0:
            return succeed(None)
        d: Deferred = Deferred()
        self._drained.append(d)
        return d

    def forget(self, connection: BusProtocol) -> None:
        """A connection is gone."""
        self.connections.discard(connection)
        if not self.connections and self._closed:
            waiting, self._closed = self._closed, []
            for d in waiting:
                d.callback(None)

    def all_closed(self) -> Deferred:
        """Fires when no connection is open."""
        if not self.connections:
            return succeed(None)
        d: Deferred = Deferred()
        self._closed.append(d)
        return d


def _unavailable_line(operation: str) -> bytes:
    return error_line(operation, errors.unavailable())


def _unavailable(operation: str) -> Request:
    return answered(operation, _unavailable_line(operation), code="unavailable")
