"""PostgreSQL LISTEN: other nodes' changes wake this node's long polls.

Every transaction that gives a stream events to offer (a write, a mark to
unprocessed or retry, an expired lease, a delete) runs ``pg_notify`` with
the stream's name; PostgreSQL delivers it when, and only if, the transaction
commits. This service keeps one dedicated connection in ``LISTEN`` in its own
thread and hands the names to :meth:`ChangeNotifier.changed` on the reactor
thread, coalescing bursts into one hop.

While the connection is down notifications are lost, so each time it
(re)starts listening it calls :meth:`ChangeNotifier.changed_all`: every long
poll looks again, and nothing that committed while it was away is waited
past. It reconnects by itself, backing off up to a few seconds.
"""

from __future__ import annotations

import threading
from typing import Any

import psycopg
from sqlalchemy.engine import make_url
from twisted.application.service import Service
from twisted.internet.defer import Deferred, succeed
from twisted.logger import Logger

from eventbus.notify import ChangeNotifier
from eventbus.storage.engines import NOTIFY_CHANNEL, pg_connect_args

#: How often the thread looks up from waiting (to stop, or to check the
#: connection when nothing has arrived for a while).
POLL_SECONDS = 0.5
IDLE_CHECK_SECONDS = 15.0
MAX_BACKOFF_SECONDS = 5.0


def libpq_conninfo(url: str) -> tuple[str, dict[str, Any]]:
    """A SQLAlchemy ``postgresql+psycopg://`` URL as a libpq URI and the
    connection settings the engines use (timeouts, keepalives)."""
    sa_url = make_url(url)
    settings = pg_connect_args(sa_url, "listener")
    uri = sa_url.set(drivername="postgresql").render_as_string(hide_password=False)
    return uri, settings


class PgListener(Service):
    """The LISTEN thread, as a service started after the database."""

    log = Logger()

    def __init__(
        self, url: str, notifier: ChangeNotifier, reactor: Any, channel: str = NOTIFY_CHANNEL
    ) -> None:
        self.url = url
        self.notifier = notifier
        self.reactor = reactor
        self.channel = channel
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stopped: Deferred | None = None
        self._lock = threading.Lock()
        self._pending: set[str] = set()
        self._flush_all = False

    def startService(self) -> None:
        super().startService()
        self._stop.clear()
        self._stopped = Deferred()
        self._thread = threading.Thread(target=self._run, name="eventbus-pg-listen", daemon=True)
        self._thread.start()

    def stopService(self) -> Deferred:
        super().stopService()
        self._stop.set()
        return self._stopped if self._stopped is not None else succeed(None)

    # -- listener thread -------------------------------------------------------

    def _run(self) -> None:
        uri, settings = libpq_conninfo(self.url)
        backoff = 0.1
        try:
            while not self._stop.is_set():
                try:
                    with psycopg.connect(uri, autocommit=True, **settings) as conn:
                        conn.execute(f'LISTEN "{self.channel}"')
                        self.log.info("listening for changes from other nodes")
                        self._deliver(changed_all=True)
                        backoff = 0.1
                        self._listen(conn)
                except psycopg.Error as e:
                    if self._stop.is_set():
                        break
                    self.log.warn(
                        "change listener lost its connection ({error}); again in {delay:.1f}s",
                        error=_one_line(e),
                        delay=backoff,
                    )
                    self._stop.wait(backoff)
                    backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
                except Exception:
                    self.log.failure("change listener failed; starting again")
                    self._stop.wait(MAX_BACKOFF_SECONDS)
        finally:
            self.reactor.callFromThread(self._finished)

    def _listen(self, conn: psycopg.Connection) -> None:
        idle = 0.0
        while not self._stop.is_set():
            got = False
            for notify in conn.notifies(timeout=POLL_SECONDS):
                got = True
                self._deliver(notify.payload)
            if got:
                idle = 0.0
                continue
            idle += POLL_SECONDS
            if idle >= IDLE_CHECK_SECONDS:
                # Nothing for a while: make sure the connection still works.
                conn.execute("SELECT 1")
                idle = 0.0

    def _deliver(self, name: str | None = None, changed_all: bool = False) -> None:
        """Queue a change for the reactor; one hop carries all queued since."""
        with self._lock:
            first = not self._pending and not self._flush_all
            if name is not None:
                self._pending.add(name)
            self._flush_all = self._flush_all or changed_all
        if first:
            self.reactor.callFromThread(self._flush)

    # -- reactor thread ------------------------------------------------------

    def _flush(self) -> None:
        with self._lock:
            names, self._pending = self._pending, set()
            everything, self._flush_all = self._flush_all, False
        if everything:
            self.notifier.changed_all()
        for name in names:
            self.notifier.changed(name)

    def _finished(self) -> None:
        if self._stopped is not None and not self._stopped.called:
            self._stopped.callback(None)


def _one_line(error: Exception) -> str:
    return " ".join(str(error).split()) or type(error).__name__
