"""Helpers of the hardening tests (tests/test_hardening_*.py).

Protocol unit tests drive the real protocol, the real dispatcher, the real
services and the real queries on a real SQLite file. The stand-ins are the
clock (``twisted.internet.task.Clock``), the transport (``StringTransport``)
and :class:`SynchronousDatabase`, which runs each transaction at once on the
calling thread instead of on the writer and reader threads.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import globalLogPublisher
from zope.interface import implementer

from eventbus.auth import Authenticator, FailureThrottle
from eventbus.bus import Events, Streams
from eventbus.config import ClientConfig
from eventbus.errors import BusError
from eventbus.interfaces import IDatabase
from eventbus.notify import ChangeNotifier
from eventbus.operations import Dispatcher
from eventbus.protocol import BusFactory, BusProtocol, Limits
from eventbus.storage import migrate
from eventbus.storage.engines import make_engine

AUTH = {"client_id": "dope_go_client_id", "client_secret": "dope_go_client_secret"}
CLIENTS = (ClientConfig("go-client", AUTH["client_id"], AUTH["client_secret"]),)


@implementer(IDatabase)
class SynchronousDatabase:
    """The real schema and queries on a real SQLite file, each transaction
    run at once on the calling thread: Deferreds that have already fired."""

    dialect = "sqlite"

    def __init__(self, path: Path) -> None:
        url = f"sqlite:///{path}"
        migrate.upgrade(url)
        self.engine = make_engine(url, role="writer")
        self.conn = self.engine.connect()

    def write(self, fn: Any, *args: Any, committed: Any = None) -> Deferred:
        return self._txn(fn, args, committed)

    def write_then(self, fn: Any, args: tuple, reply: Any, committed: Any = None, render: Any = None) -> None:
        self._txn(fn, args, committed, render).addBoth(reply)

    def read(self, fn: Any, *args: Any) -> Deferred:
        return self._txn(fn, args)

    def _txn(self, fn: Any, args: tuple, committed: Any = None, render: Any = None) -> Deferred:
        try:
            with self.conn.begin():
                result = fn(self.conn, *args)
            if render is not None:
                result = render(result)
            if committed is not None:
                committed(args, result)
            return succeed(result)
        except BusError as e:
            return fail(e)
        except Exception:
            # Anything else is a bug the tests want to see: pass it up as it is.
            return fail()

    def close(self) -> None:
        self.conn.close()
        self.engine.dispose()


class Harness:
    """A factory of real protocols over one database, with a fake clock."""

    def __init__(self, tmp_path: Path, clients: tuple[ClientConfig, ...] = CLIENTS, **limits: Any) -> None:
        self.clock = Clock()
        self.clock.advance(1_800_000_000)  # a plausible "now" for created_at
        self.db = SynchronousDatabase(tmp_path / "unit.db")
        notifier = ChangeNotifier(self.clock)
        self.streams = Streams(self.db, notifier)
        self.events = Events(self.db, notifier)
        self.dispatcher = Dispatcher(self.streams, self.events, Authenticator(clients), self.clock)
        self.throttle = FailureThrottle(self.clock)
        self.factory = BusFactory(self.dispatcher, Limits(**limits), self.clock, self.throttle)

    def connect(self, host: str = "10.0.0.7") -> tuple[BusProtocol, StringTransport]:
        peer = IPv4Address("TCP", host, 40000)
        proto = self.factory.buildProtocol(peer)
        # lenient: like a real transport, pausing a closing one is no error.
        transport = StringTransport(peerAddress=peer, lenient=True)
        proto.makeConnection(transport)
        return proto, transport

    def close(self) -> None:
        for conn in list(self.factory.connections):
            conn.connectionLost(None)
        self.db.close()


def request(operation: str, body: Any = None, auth: Any = AUTH) -> bytes:
    """One request line."""
    req: dict[str, Any] = {"operation": operation}
    if auth is not None:
        req["auth"] = auth
    if body is not None:
        req["body"] = body
    return orjson.dumps(req) + b"\n"


def responses(transport: StringTransport) -> list[dict[str, Any]]:
    """Every response line written so far, decoded; clears the transport."""
    data = transport.value()
    transport.clear()
    assert data == b"" or data.endswith(b"\n"), data[-200:]
    return [json.loads(line) for line in data.splitlines()]


def check_response(response: Any) -> None:
    """One well-formed response object (PROTOCOL.md section 3)."""
    assert isinstance(response, dict), response
    assert isinstance(response.get("operation"), str), response
    assert isinstance(response.get("status"), bool), response
    if response["status"]:
        assert set(response) <= {"operation", "status", "body"}, response
    else:
        assert isinstance(response.get("reason"), str) and response["reason"], response
        assert isinstance(response.get("code"), str) and response["code"], response
        assert set(response) <= {"operation", "status", "reason", "code", "context"}, response


# -- real processes ------------------------------------------------------------


def rss_kib(pid: int, field: str = "VmRSS") -> int:
    """A process's resident memory (or its peak, ``VmHWM``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} for {pid}")


def reset_peak_rss(pid: int) -> None:
    """Start a new peak (VmHWM) measurement (Linux: write 5 to clear_refs)."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def wait_for(predicate: Any, timeout: float, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def send_until_stalled(
    sock: socket.socket, chunk: bytes, limit_bytes: int, stall_seconds: float = 1.0
) -> int:
    """Send ``chunk`` again and again without reading, until ``limit_bytes``
    are sent or the peer has accepted nothing for ``stall_seconds``.
    Returns the bytes sent."""
    sock.setblocking(False)
    sent = 0
    view = memoryview(chunk)
    offset = 0
    last_progress = time.monotonic()
    try:
        while sent < limit_bytes:
            try:
                n = sock.send(view[offset:])
            except BlockingIOError:
                if time.monotonic() - last_progress > stall_seconds:
                    break
                time.sleep(0.01)
                continue
            sent += n
            offset = (offset + n) % len(chunk)
            last_progress = time.monotonic()
    finally:
        sock.setblocking(True)
    return sent


@contextmanager
def logged_failures() -> Iterator[list[dict[str, Any]]]:
    """Log events that carry a failure (a traceback), while the block runs."""
    seen: list[dict[str, Any]] = []

    def observe(event: dict[str, Any]) -> None:
        if "log_failure" in event:
            seen.append(event)

    globalLogPublisher.addObserver(observe)
    try:
        yield seen
    finally:
        globalLogPublisher.removeObserver(observe)
