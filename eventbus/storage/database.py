"""The database service: migrations at start, one writer, a pool of readers.

Nothing here runs on the reactor thread except queueing: writes go to the
group-commit writer (on SQLite a process of its own, see writer_process; on
PostgreSQL a thread), reads to a thread pool whose threads each use their
own connection. Both return Deferreds that fire on the reactor thread.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from twisted.application.service import Service
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.threadpool import ThreadPool
from zope.interface import implementer

from eventbus import errors
from eventbus.interfaces import IDatabase
from eventbus.storage import migrate
from eventbus.storage.engines import BUSY_TIMEOUT_MS, make_engine
from eventbus.storage.writer import Committed, GroupCommitWriter, Render, Reply, deferred_reply
from eventbus.storage.writer_process import ProcessWriter


@implementer(IDatabase)
class Database(Service):
    log = Logger()

    def __init__(
        self, url: str, reactor: Any, readers: int = 4, busy_timeout_ms: int = BUSY_TIMEOUT_MS
    ) -> None:
        self.url = url
        self.reactor = reactor
        self.readers = readers
        #: How long a transaction waits for a lock another process holds.
        self.busy_timeout_ms = busy_timeout_ms
        self.writer: GroupCommitWriter | ProcessWriter | None = None
        self._pool: ThreadPool | None = None
        self._engines: list[sa.Engine] = []

    @property
    def dialect(self) -> str:
        return sa.engine.make_url(self.url).get_backend_name()

    def startService(self) -> None:
        # Start-up, before any listener accepts: migrating here, blocking, is
        # what makes the server refuse to start on a schema it cannot use.
        migrate.upgrade(self.url)
        busy = self.busy_timeout_ms
        reader_engine = make_engine(self.url, role="reader", pool_size=self.readers, busy_timeout_ms=busy)
        self._engines = [reader_engine]
        self._reader_engine = reader_engine
        if self.dialect == "sqlite":
            # Its own process, its own GIL: see writer_process.
            self.writer = ProcessWriter(self.url, self.reactor, busy)
        else:
            writer_engine = make_engine(self.url, role="writer", pool_size=1, busy_timeout_ms=busy)
            self._engines.append(writer_engine)
            self.writer = GroupCommitWriter(writer_engine, self.reactor)
        self.writer.start()
        self._pool = ThreadPool(minthreads=1, maxthreads=self.readers, name="eventbus-readers")
        self._pool.start()
        super().startService()

    def stopService(self) -> Deferred:
        super().stopService()
        d = self.writer.stop() if self.writer else succeed(None)

        def _close(_: object) -> None:
            if self._pool is not None:
                self._pool.stop()
            for engine in self._engines:
                engine.dispose()
            self.log.info("database closed")

        return d.addCallback(_close)

    def write(self, fn: Callable[..., Any], *args: Any, committed: Committed | None = None) -> Deferred:
        d: Deferred = Deferred()
        self.write_then(fn, args, deferred_reply(d), committed)
        return d

    def write_then(
        self,
        fn: Callable[..., Any],
        args: tuple,
        reply: Reply,
        committed: Committed | None = None,
        render: Render | None = None,
    ) -> None:
        if self.writer is None or not self.running:
            reply(errors.unavailable("the server is shutting down"))
            return
        try:
            self.writer.submit_then(fn, args, reply, committed, render)
        except errors.BusError as e:
            reply(e)

    def read(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        if self._pool is None or not self.running:
            return _refused()
        return deferToThreadPool(self.reactor, self._pool, self._read_txn, fn, args)

    def _read_txn(self, fn: Callable[..., Any], args: tuple) -> Any:
        try:
            with self._reader_engine.connect() as conn:
                with conn.begin():
                    return fn(conn, *args)
        except DBAPIError:
            self.log.failure("read transaction failed")
            raise errors.unavailable("storage is failing; retry") from None


def _refused() -> Deferred:
    return fail(errors.unavailable("the server is shutting down"))
