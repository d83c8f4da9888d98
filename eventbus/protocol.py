"""The wire: newline-delimited JSON over a stream transport.

One :class:`BusProtocol` per connection. It frames lines, hands each to the
dispatcher, and writes the responses back in request order however the
requests finish. It keeps a connection's effects in order too: requests run
in *lanes* (reads, writes); consecutive requests of one lane run together
(pipelined writes share one group commit), and a request of the other lane
waits until those before it are answered, so a client always reads its own
writes. It stops reading from a client that does not read its responses or
has too many requests pending, closes idle connections, and refuses
connections over the limit.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import LineReceiver
from twisted.protocols.policies import TimeoutMixin

from eventbus import errors
from eventbus.operations import Dispatcher, Request, error_line

# Pause reasons: a paused connection reads nothing until all are gone.
_OUTPUT, _PENDING, _SHUTDOWN = "output", "pending", "shutdown"


@dataclass(frozen=True)
class Limits:
    max_line_bytes: int = 1024 * 1024
    max_pending_requests: int = 1000
    idle_timeout_seconds: float = 300
    max_connections: int = 10_000
    abort_after_seconds: float = 10


class _Slot:
    """One request's place in the response order."""

    __slots__ = ("line", "closes")

    def __init__(self, closes: bool) -> None:
        self.line: bytes | None = None
        self.closes = closes


class BusProtocol(LineReceiver, TimeoutMixin):
    delimiter = b"\n"
    log = Logger()

    def __init__(self, factory: "BusFactory") -> None:
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
        self.transport.registerProducer(self, True)
        self.setTimeout(self.limits.idle_timeout_seconds)

    def connectionLost(self, reason: Any = None) -> None:
        self._lost = True
        self.setTimeout(None)
        self.factory.connections.discard(self)
        for d in list(self._inflight):
            d.cancel()
        self._slots.clear()
        self._blocked.clear()

    def timeoutConnection(self) -> None:
        if self._slots:
            # Waiting on us (a long poll, a slow commit) is not idleness.
            # Start a new period: resetTimeout() is a no-op once timed out.
            self.setTimeout(self.limits.idle_timeout_seconds)
            return
        self.close()

    def close(self) -> None:
        """Close politely; abort if the peer does not let us finish."""
        self._closing = True
        if _OUTPUT in self._pauses:
            self.transport.abortConnection()
            return
        self.transport.loseConnection()
        self.factory.reactor.callLater(self.limits.abort_after_seconds, self._abort_if_open)

    def _abort_if_open(self) -> None:
        if not self._lost:
            self.transport.abortConnection()

    # -- input ---------------------------------------------------------------

    def lineReceived(self, line: bytes) -> None:
        if self._closing:
            return
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            return
        self.resetTimeout()
        request = self.dispatcher.prepare(line)
        slot = _Slot(request.closes)
        self._slots.append(slot)
        if request.closes:
            self._closing = True
        if request.lane is None:
            slot.line = request.run()
            self._flush()
        elif not self._blocked and (self._running == 0 or request.lane == self._lane):
            self._start(slot, request)
        else:
            self._blocked.append((slot, request))
        if len(self._slots) >= self.limits.max_pending_requests:
            self._pause(_PENDING)

    def lineLengthExceeded(self, line: bytes) -> None:
        self.clearLineBuffer()
        if self._closing:
            return
        slot = _Slot(True)
        slot.line = error_line("decode_request", errors.line_too_long(self.MAX_LENGTH))
        self._slots.append(slot)
        self._closing = True
        self._flush()

    # -- running requests in lanes ---------------------------------------------

    def _start(self, slot: _Slot, request: Request) -> None:
        self._running += 1
        self._lane = request.lane
        self.factory.inflight += 1
        result = request.run()
        if isinstance(result, bytes):
            self._finished(result, slot, None)
            return
        self._inflight.add(result)
        result.addCallback(self._finished, slot, result)

    def _finished(self, line: bytes, slot: _Slot, d: Deferred | None) -> None:
        self.factory.request_done()
        if d is not None:
            self._inflight.discard(d)
        if self._lost:
            return
        slot.line = line
        self._running -= 1
        while self._blocked and (self._running == 0 or self._blocked[0][1].lane == self._lane):
            self._start(*self._blocked.popleft())
        self._flush()

    # -- output --------------------------------------------------------------------

    def _flush(self) -> None:
        out = []
        close = False
        slots = self._slots
        while slots and slots[0].line is not None:
            slot = slots.popleft()
            out.append(slot.line)
            if slot.closes:
                close = True
                break
        if out and not self._lost:
            self.transport.writeSequence(out)
        if close:
            self._slots.clear()
            self._blocked.clear()
            self.close()
        elif _PENDING in self._pauses and len(slots) < self.limits.max_pending_requests // 2:
            self._resume(_PENDING)

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

    def __init__(self, dispatcher: Dispatcher, limits: Limits, reactor: Any) -> None:
        self.dispatcher = dispatcher
        self.limits = limits
        self.reactor = reactor
        self.connections: set[BusProtocol] = set()
        self.inflight = 0
        self._drained: list[Deferred] = []

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
