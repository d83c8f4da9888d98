"""The blocking client: plain method calls over one TCP (or TLS) connection.

::

    from eventbus.client import Client

    with Client("127.0.0.1:8080", "my_client_id", "my_secret") as bus:
        bus.create_stream("orders")
        written = bus.write_event("orders", {"id": 1}, key="order-1")
        for event in bus.consume("orders", lease_seconds=30):
            handle(event.body)

Threads: a :class:`Client` is one connection. Calls from several threads on
one client are safe (a lock serializes them) but they wait for each other,
long polls included; for parallel work give each thread its own client.

Reconnecting: a broken connection is replaced on the next call. A request
whose answer was lost is sent again only when that is safe (see
:mod:`eventbus.client.calls` for the list: reads, keyed writes, marks without
a lease); otherwise :class:`~eventbus.client.errors.ConnectionFailed` is
raised with ``maybe_applied=True`` so the caller decides. ``unavailable``
answers (nothing was changed) are retried for every request. Retries are
bounded by ``retries`` with a short growing pause.
"""

from __future__ import annotations

import os
import select
import selectors
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from eventbus.client import calls
from eventbus.client.address import Address, parse_address
from eventbus.client.calls import Call
from eventbus.client.errors import (
    ConnectionFailed,
    EventBusError,
    ProtocolError,
    RequestError,
    Unavailable,
    error_from_response,
)
from eventbus.client.models import Event
from eventbus.client.operations import Operations

if TYPE_CHECKING:
    from eventbus.client.consumer import Consumer

T = TypeVar("T")

#: Requests in flight at once in a pipeline: well under the server's default
#: per-connection limit (1000), past which it stops reading from us.
PIPELINE_WINDOW = 256
_RECV = 256 * 1024
_SEND_CHUNK = 1024 * 1024


class TLSFailed(ConnectionFailed):
    """The TLS handshake failed (certificate, protocol): retrying will not help."""


class _Connection:
    """One socket, non-blocking, read and written through a selector so a
    pipeline can send and receive at once (never deadlocking on full buffers)."""

    def __init__(self, address: Address, ssl_context: ssl.SSLContext | None, connect_timeout: float) -> None:
        try:
            sock = socket.create_connection((address.host, address.port), timeout=connect_timeout)
        except OSError as e:
            raise ConnectionFailed(f"cannot connect to {address}: {e}") from e
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if ssl_context is not None:
                sock = ssl_context.wrap_socket(sock, server_hostname=address.host)
        except ssl.SSLError as e:
            sock.close()
            raise TLSFailed(f"TLS with {address} failed: {e}") from e
        except OSError as e:
            sock.close()
            raise ConnectionFailed(f"cannot connect to {address}: {e}") from e
        sock.setblocking(False)
        self.sock = sock
        self.address = address
        self._buffer = bytearray()
        self._selector = selectors.DefaultSelector()

    def close(self) -> None:
        self._selector.close()
        try:
            self.sock.close()
        except OSError:
            pass

    def is_stale(self) -> bool:
        """True if the server closed the connection (or sent unasked bytes)
        while we were idle: then it must not carry the next request."""
        try:
            self.sock.recv(1)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return False
        except OSError:
            return True
        return True  # b"": EOF; or bytes nobody asked for: either way, start afresh

    def wait_closed(self, timeout: float) -> None:
        """Read until the server's end of the connection (TLS: its close
        alert), so it sees an orderly close rather than waiting on us."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                if not self.sock.recv(_RECV):
                    return
            except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([self.sock], [], [], remaining)[0]:
                    return
            except OSError:
                return

    def exchange(
        self,
        lines: list[bytes],
        timeout: float,
        on_response: Callable[[int, dict[str, Any]], None],
    ) -> None:
        """Send ``lines`` and hand each response to ``on_response`` in order.

        ``timeout`` is the longest silence tolerated (nothing sent or read).
        Raises ConnectionFailed (``maybe_applied`` True once anything was sent).
        """
        total = len(lines)
        out = bytearray()
        queued = 0  # lines moved into ``out``
        answered = 0
        sent_any = False
        sel = self._selector
        sel.register(self.sock, selectors.EVENT_READ)
        try:
            while answered < total:
                while queued < total and queued - answered < PIPELINE_WINDOW and len(out) < _SEND_CHUNK:
                    out += lines[queued]
                    queued += 1
                sel.modify(self.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if out else 0))
                # TLS may hold decrypted bytes the selector cannot see.
                pending = isinstance(self.sock, ssl.SSLSocket) and self.sock.pending() > 0
                ready = [(None, selectors.EVENT_READ)] if pending else sel.select(timeout)
                if not ready:
                    raise ConnectionFailed(
                        f"no answer from {self.address} in {timeout:g}s", maybe_applied=sent_any
                    )
                mask = 0
                for _, events in ready:
                    mask |= events
                if mask & selectors.EVENT_WRITE and out:
                    try:
                        n = self.sock.send(out)
                    except (BlockingIOError, ssl.SSLWantWriteError, ssl.SSLWantReadError):
                        n = 0
                    except OSError as e:
                        raise ConnectionFailed(f"connection to {self.address} broke: {e}", sent_any) from e
                    if n:
                        sent_any = True
                        del out[:n]
                if mask & selectors.EVENT_READ:
                    answered = self._read(answered, on_response, sent_any)
        finally:
            sel.unregister(self.sock)

    def _read(self, answered: int, on_response: Callable[[int, dict[str, Any]], None], sent_any: bool) -> int:
        try:
            data = self.sock.recv(_RECV)
        except (BlockingIOError, ssl.SSLWantReadError, ssl.SSLWantWriteError):
            return answered
        except OSError as e:
            raise ConnectionFailed(f"connection to {self.address} broke: {e}", sent_any) from e
        if not data:
            raise ConnectionFailed(f"{self.address} closed the connection", maybe_applied=sent_any)
        self._buffer += data
        buf = self._buffer
        start = 0
        while True:
            end = buf.find(b"\n", start)
            if end < 0:
                break
            line = bytes(buf[start:end])
            start = end + 1
            if not line.strip():
                continue
            try:
                response = orjson.loads(line)
            except orjson.JSONDecodeError:
                raise ProtocolError(f"not a JSON response line: {line[:200]!r}") from None
            if not isinstance(response, dict) or "status" not in response:
                raise ProtocolError(f"not a response object: {line[:200]!r}")
            on_response(answered, response)
            answered += 1
        del buf[:start]
        return answered


class Client(Operations[Any]):
    """A blocking Event Bus client (see the module docstring).

    ``address`` is ``host:port``, ``tcp://host:port`` or ``tls://host:port``;
    ``tls`` may also be an :class:`ssl.SSLContext` of your own. ``timeout``
    is the longest the client waits in silence for an answer (a long poll
    adds its ``wait_seconds``). ``retries`` bounds reconnects and resends.

    The operation methods (:class:`~eventbus.client.operations.Operations`)
    return each call's result and raise its error.
    """

    def __init__(
        self,
        address: str = "127.0.0.1:8080",
        client_id: str | None = None,
        client_secret: str | None = None,
        *,
        tls: bool | ssl.SSLContext | None = None,
        ca_file: str | None = None,
        verify: bool = True,
        timeout: float = 30.0,
        connect_timeout: float = 10.0,
        retries: int = 3,
        retry_delay: float = 0.1,
    ) -> None:
        self.address = parse_address(address, None if tls is None else bool(tls))
        self.client_id = client_id
        self.client_secret = client_secret
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.retries = retries
        self.retry_delay = retry_delay
        self._ssl_context = _ssl_context(tls, self.address.tls, ca_file, verify)
        self._auth = calls.credentials(client_id, client_secret)
        self._conn: _Connection | None = None
        self._lock = threading.RLock()
        #: Connections made so far (1 after the first call; more after reconnects).
        self.connects = 0

    @classmethod
    def from_env(cls, **overrides: Any) -> Client:
        """A client from EVENTBUS_ADDRESS, EVENTBUS_CLIENT_ID, EVENTBUS_CLIENT_SECRET,
        EVENTBUS_TLS (1/true) and EVENTBUS_CA_FILE; keyword arguments win."""
        env = os.environ
        kwargs: dict[str, Any] = {
            "address": env.get("EVENTBUS_ADDRESS", "127.0.0.1:8080"),
            "client_id": env.get("EVENTBUS_CLIENT_ID"),
            "client_secret": env.get("EVENTBUS_CLIENT_SECRET"),
            "ca_file": env.get("EVENTBUS_CA_FILE"),
        }
        if env.get("EVENTBUS_TLS"):
            kwargs["tls"] = env["EVENTBUS_TLS"].lower() in ("1", "true", "yes", "on")
        kwargs.update(overrides)
        return cls(**kwargs)

    # -- connection --------------------------------------------------------------

    def connect(self) -> Client:
        """Connect now rather than on the first call (to fail early)."""
        with self._lock:
            self._connection()
        return self

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _connection(self) -> _Connection:
        if self._conn is not None and self._conn.is_stale():
            self._conn.close()
            self._conn = None
        if self._conn is None:
            self._conn = _Connection(self.address, self._ssl_context, self.connect_timeout)
            self.connects += 1
        return self._conn

    def _drop(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def encode(self, call: Call[Any]) -> bytes:
        """The request line for ``call`` (with this client's credentials)."""
        return call.line(self._auth)

    def _wait_for(self, call: Call[Any]) -> float:
        wait = (call.body or {}).get("wait_seconds") or 0
        return self.timeout + float(wait)

    def _wait_for_all(self, calls_: list[Call[Any]]) -> float:
        """Silence tolerated in a pipeline: the longest single call's."""
        return max((self._wait_for(c) for c in calls_), default=self.timeout)

    # -- running calls -----------------------------------------------------------

    def run(self, call: Call[T]) -> T:
        """Send one call and return its parsed result (or raise its error)."""
        line = self.encode(call)
        attempt = 0
        with self._lock:
            while True:
                responses: list[dict[str, Any]] = []
                try:
                    conn = self._connection()
                    conn.exchange([line], self._wait_for(call), _collect(responses))
                except TLSFailed:
                    self._drop()
                    raise
                except ConnectionFailed as e:
                    self._drop()
                    if attempt >= self.retries or (e.maybe_applied and not call.safe):
                        raise
                    attempt += 1
                    self._pause(attempt)
                    continue
                except ProtocolError:
                    self._drop()
                    raise
                response = responses[0]
                if response.get("status") is True:
                    try:
                        return call.parse(response.get("body"))
                    except (KeyError, TypeError, ValueError) as e:
                        raise ProtocolError(f"unexpected {call.operation} answer: {e!r}") from e
                error = error_from_response(response)
                if isinstance(error, Unavailable) and attempt < self.retries:
                    attempt += 1
                    self._pause(attempt)
                    continue
                raise error

    def _pause(self, attempt: int) -> None:
        time.sleep(min(self.retry_delay * 2 ** (attempt - 1), 2.0))

    def pipeline(self) -> Pipeline:
        """Collect calls, then send them all at once and read all answers
        (see :class:`Pipeline`): one round trip for a whole batch."""
        return Pipeline(self)

    # -- operations (PROTOCOL.md 5 and 7; the methods are in Operations) ---------

    def _submit(self, call: Call[T]) -> T:
        return self.run(call)

    def exit(self) -> None:
        """The original's ``exit``: the server answers and closes the connection
        (the next call opens a new one)."""
        with self._lock:
            try:
                self.run(calls.exit())
                if self._conn is not None:
                    self._conn.wait_closed(self.timeout)
            finally:
                self._drop()

    def iter_events(
        self, name: str, *, after_seq: int | None = None, page_size: int = 1000
    ) -> Iterable[Event]:
        """Every event of a stream, page by page (get_stream_events + after_seq)."""
        while True:
            page = self.get_stream_events(name, limit=page_size, after_seq=after_seq)
            yield from page.events
            if page.next_after_seq is None:
                return
            after_seq = page.next_after_seq

    def consume(
        self,
        name: str,
        *,
        lease_seconds: int = 30,
        batch: int = 10,
        wait_seconds: float = 10,
        retries: bool = True,
        max_events: int | None = None,
    ) -> Consumer:
        """Work through a stream with leases (see :class:`Consumer`)::

            for event in client.consume("orders", lease_seconds=30):
                handle(event.body)   # returns: marked processed; raises: marked retry
        """
        from eventbus.client.consumer import Consumer

        return Consumer(
            self,
            name,
            lease_seconds=lease_seconds,
            batch=batch,
            wait_seconds=wait_seconds,
            retries=retries,
            max_events=max_events,
        )


class Pipeline(Operations[int]):
    """Many calls, one round trip: queue them, then :meth:`execute`.

    ::

        with client.pipeline() as p:
            for order in orders:
                p.write_event("orders", order)
        written = p.results        # in order; a refused call's slot holds its RequestError

    Up to :data:`PIPELINE_WINDOW` requests are in flight at once while the
    answers stream back. If the connection breaks, the unanswered calls are
    sent again only when all of them are safe to retry; otherwise
    ConnectionFailed is raised and ``results`` holds the answers that came.

    The operation methods (:class:`~eventbus.client.operations.Operations`)
    queue their call and return the index of its result.
    """

    def __init__(self, client: Client) -> None:
        self.client = client
        self.calls: list[Call[Any]] = []
        self.results: list[Any] = []

    def add(self, call: Call[Any]) -> int:
        """Queue a call built with :mod:`eventbus.client.calls`; its result index."""
        self.calls.append(call)
        return len(self.calls) - 1

    def __len__(self) -> int:
        return len(self.calls)

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is None:
            self.execute()

    def execute(self, on_result: Callable[[int, Any], None] | None = None) -> list[Any]:
        """Send every queued call; results (or RequestError instances) in order.

        ``on_result(index, result)`` is called as each answer arrives (for
        progress reporting).
        """
        client = self.client
        calls_ = self.calls
        results: list[Any] = [None] * len(calls_)
        self.results = results
        done = 0

        def take(i: int, response: dict[str, Any]) -> None:
            nonlocal done
            index = done + i
            call = calls_[index]
            if response.get("status") is True:
                try:
                    results[index] = call.parse(response.get("body"))
                except (KeyError, TypeError, ValueError) as e:
                    results[index] = ProtocolError(f"unexpected {call.operation} answer: {e}")
            else:
                results[index] = error_from_response(response)
            if on_result is not None:
                on_result(index, results[index])

        attempt = 0
        with client._lock:
            while done < len(calls_):
                answered = 0

                def counted(i: int, response: dict[str, Any]) -> None:
                    nonlocal answered
                    take(i, response)
                    answered = i + 1

                lines = [client.encode(c) for c in calls_[done:]]
                try:
                    conn = client._connection()
                    conn.exchange(lines, client._wait_for_all(calls_[done:]), counted)
                    done = len(calls_)
                except TLSFailed:
                    client._drop()
                    raise
                except ConnectionFailed as e:
                    client._drop()
                    done += answered
                    rest = calls_[done:]
                    unsafe = e.maybe_applied and not all(c.safe for c in rest)
                    if attempt >= client.retries or unsafe:
                        raise
                    attempt += 1
                    client._pause(attempt)
                except ProtocolError:
                    client._drop()
                    raise
        return results

    def raise_first_error(self) -> None:
        """Raise the first refused call's error, if any (after execute)."""
        for result in self.results:
            if isinstance(result, EventBusError):
                raise result

    def _submit(self, call: Call[Any]) -> int:
        return self.add(call)


def _collect(responses: list[dict[str, Any]]) -> Callable[[int, dict[str, Any]], None]:
    return lambda _i, response: responses.append(response)


def _ssl_context(
    tls: bool | ssl.SSLContext | None, address_tls: bool, ca_file: str | None, verify: bool
) -> ssl.SSLContext | None:
    if isinstance(tls, ssl.SSLContext):
        return tls
    if not address_tls:
        return None
    context = ssl.create_default_context(cafile=ca_file)
    if not verify:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context


__all__ = ["Client", "Pipeline", "RequestError", "ConnectionFailed", "TLSFailed"]
