"""The Twisted client: the same operations, returning Deferreds.

For programs that already run a reactor::

    from twisted.internet import defer, task
    from eventbus.client.deferred import TwistedClient

    @defer.inlineCallbacks
    def main(reactor):
        bus = TwistedClient(reactor, "127.0.0.1:8080", "my_client_id", "my_secret")
        yield bus.create_stream("orders")
        written = yield bus.write_event("orders", {"id": 1})
        page = yield bus.process_events("orders", lease_seconds=30, wait_seconds=10)
        for event in page:
            yield bus.mark_event(event.id, 1, lease_id=event.lease_id)
        bus.close()

    task.react(main)

Requests may be issued without waiting for earlier answers: they are
pipelined on one connection and answered in order. The connection is made on
the first request and made again on the next request after it breaks; when
it breaks, the requests still waiting for an answer that are safe to retry
(:mod:`eventbus.client.calls`) are sent again on the new connection, the
others fail with ConnectionFailed(maybe_applied=True).
"""

from __future__ import annotations

from collections import deque
from typing import Any

import orjson
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, fail
from twisted.protocols.basic import LineReceiver
from twisted.python.failure import Failure

from eventbus.client import calls
from eventbus.client.address import parse_address
from eventbus.client.calls import Call
from eventbus.client.errors import ConnectionFailed, ProtocolError, error_from_response
from eventbus.client.operations import Operations


class _Pending:
    __slots__ = ("call", "line", "deferred", "resent")

    def __init__(self, call: Call[Any], line: bytes) -> None:
        self.call = call
        self.line = line
        self.resent = 0
        self.deferred: Deferred = Deferred()


class _ClientProtocol(LineReceiver):
    delimiter = b"\n"
    # A page of 10,000 large events is one line: allow big ones.
    MAX_LENGTH = 1 << 30

    def __init__(self) -> None:
        self.waiting: deque[_Pending] = deque()
        self.lost: Deferred = Deferred()

    def send(self, pending: _Pending) -> None:
        self.waiting.append(pending)
        self.transport.write(pending.line)

    def lineReceived(self, line: bytes) -> None:
        if not line.strip():
            return
        if not self.waiting:
            self.transport.loseConnection()  # an answer nobody asked for: out of step
            return
        pending = self.waiting.popleft()
        try:
            response = orjson.loads(line)
            if not isinstance(response, dict) or "status" not in response:
                raise ValueError("not a response object")
        except ValueError:
            pending.deferred.errback(ProtocolError(f"not a response line: {line[:200]!r}"))
            self.transport.loseConnection()
            return
        if response.get("status") is True:
            try:
                result = pending.call.parse(response.get("body"))
            except (KeyError, TypeError, ValueError) as e:
                pending.deferred.errback(ProtocolError(f"unexpected {pending.call.operation} answer: {e}"))
                return
            pending.deferred.callback(result)
        else:
            pending.deferred.errback(error_from_response(response))

    def lineLengthExceeded(self, line: bytes) -> None:
        self.transport.loseConnection()

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        self.lost.callback(None)


class TwistedClient(Operations[Deferred]):
    """Deferred-returning client; see the module docstring.

    ``address`` is ``host:port``, ``tcp://...`` or ``tls://...``, or any
    Twisted client endpoint string (``tcp:host=...:port=...``,
    ``tls:host=...:port=...``) when it contains ``=``.

    The operation methods (:class:`~eventbus.client.operations.Operations`)
    return a Deferred of each call's result (or of its error).
    """

    def __init__(
        self,
        reactor: Any,
        address: str = "127.0.0.1:8080",
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        retries: int = 3,
    ) -> None:
        self.reactor = reactor
        self.endpoint = _endpoint(reactor, address)
        self.retries = retries
        self._auth = calls.credentials(client_id, client_secret)
        self._protocol: _ClientProtocol | None = None
        self._connecting: Deferred | None = None
        self._queued: list[_Pending] = []
        self._closed = False
        self.connects = 0

    def encode(self, call: Call[Any]) -> bytes:
        """The request line for ``call`` (with this client's credentials)."""
        return call.line(self._auth)

    def run(self, call: Call[Any]) -> Deferred:
        """Send ``call``; a Deferred of its parsed result (or its RequestError)."""
        if self._closed:
            return fail(ConnectionFailed("client is closed"))
        pending = _Pending(call, self.encode(call))
        self._send(pending, 0)
        return pending.deferred

    def _send(self, pending: _Pending, attempt: int) -> None:
        if self._protocol is not None:
            self._protocol.send(pending)
            return
        self._queued.append(pending)
        if self._connecting is None:
            self._connect(attempt)

    def _connect(self, attempt: int) -> None:
        self._connecting = endpoints.connectProtocol(self.endpoint, _ClientProtocol())
        self._connecting.addCallbacks(self._connected, self._connect_failed, errbackArgs=(attempt,))

    def _connected(self, protocol: _ClientProtocol) -> None:
        self._connecting = None
        self.connects += 1
        if self._closed:
            protocol.transport.loseConnection()
            self._fail_queued(ConnectionFailed("client is closed"))
            return
        self._protocol = protocol
        protocol.lost.addCallback(self._lost, protocol)
        queued, self._queued = self._queued, []
        for pending in queued:
            protocol.send(pending)

    def _connect_failed(self, failure: Failure, attempt: int) -> None:
        self._connecting = None
        if attempt < self.retries and not self._closed:
            self.reactor.callLater(0.1 * 2**attempt, self._connect, attempt + 1)
            return
        self._fail_queued(ConnectionFailed(f"cannot connect: {failure.getErrorMessage()}"))

    def _fail_queued(self, error: Exception) -> None:
        queued, self._queued = self._queued, []
        for pending in queued:
            pending.deferred.errback(error)

    def _lost(self, _: Any, protocol: _ClientProtocol) -> None:
        if self._protocol is protocol:
            self._protocol = None
        unanswered = list(protocol.waiting)
        protocol.waiting.clear()
        resend = [p for p in unanswered if p.call.safe and p.resent < self.retries and not self._closed]
        for pending in unanswered:
            if pending not in resend:
                pending.deferred.errback(ConnectionFailed("connection lost before the answer", True))
        for pending in resend:
            pending.resent += 1
            self._send(pending, 1)

    def close(self) -> Deferred:
        """Close the connection; requests still unanswered fail."""
        self._closed = True
        protocol, self._protocol = self._protocol, None
        if protocol is None:
            d: Deferred = Deferred()
            d.callback(None)
            return d
        protocol.transport.loseConnection()
        return protocol.lost

    # -- operations: the blocking client's (Operations), returning Deferreds ----

    def _submit(self, call: Call[Any]) -> Deferred:
        return self.run(call)

    def exit(self) -> Deferred:
        """The server answers and closes the connection; the next call reconnects."""
        return self.run(calls.exit())


def _endpoint(reactor: Any, address: str) -> Any:
    if "=" in address:
        return endpoints.clientFromString(reactor, address)
    parsed = parse_address(address)
    host = parsed.host.replace(":", "\\:")
    kind = "tls" if parsed.tls else "tcp"
    return endpoints.clientFromString(reactor, f"{kind}:host={host}:port={parsed.port}")
