"""Group commit: one writer runs every write, many jobs per transaction.

The reactor thread submits jobs; the writer takes all that are pending,
runs them in one transaction (:func:`run_batch`), commits, and only then
hands all results back to the reactor in one hop (:func:`deliver`), each
first turned into what its caller needs by the job's ``render``, if it has
one (:func:`rendered`). Here the writer is a thread (PostgreSQL's); SQLite's
is a process that runs the same batches (``writer_process``). A job is
``fn(conn, *args)``. A job may raise :class:`BusError` only before it has
changed anything, so one job's refusal never disturbs the others in its
batch. Consecutive jobs of a function that has a ``batched`` attribute are
run together through it (one multi-row insert for many writers). If the
batch fails in any other way the transaction is rolled back and each job is
run again alone, so a fault is charged to the job that caused it. If the
connection breaks during the commit, the batch may have been committed:
its jobs fail with :class:`~eventbus.errors.OutcomeUnknown`, not
``unavailable`` (which promises that nothing was changed).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from functools import partial
from typing import Any

import sqlalchemy as sa
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure

from eventbus.errors import BusError, OutcomeUnknown


class Job:
    __slots__ = ("fn", "args", "reply", "committed", "render")

    def __init__(
        self,
        fn: Callable[..., Any],
        args: tuple,
        reply: Reply,
        committed: Committed | None,
        render: Render | None = None,
    ) -> None:
        self.fn = fn
        self.args = args
        self.reply = reply
        self.committed = committed
        self.render = render


#: ``reply(outcome)``: called on the reactor thread with the job's result
#: once committed, or with the BusError or Failure that refused it.
Reply = Callable[[Any], None]


#: ``committed(args, result)``: called on the reactor thread once a job's
#: change is durable, before its reply, whether or not the caller still
#: waits for it (a client gone away cancels only its Deferred).
Committed = Callable[[tuple, Any], None]


#: ``render(result)``: turns a job's committed result into what the reactor
#: thread is handed instead (a write's answer line), in the writer, after the
#: commit, so that the reactor thread does not have to. A module-level
#: function, so that it can cross to the SQLite writer process.
Render = Callable[[Any], Any]


#: Gathering before a commit, like PostgreSQL's commit_delay: when the last
#: batch held at least GATHER_AFTER jobs and fewer than half as many wait
#: now, the rest are on their way (those clients were answered a moment
#: ago), so the writer waits GATHER_SECONDS (a fraction of one fsync) for
#: them to share the next commit instead of paying for one more.
GATHER_AFTER = 8
GATHER_SECONDS = 0.0003


class GroupCommitWriter:
    """The single writer thread and its queue of jobs."""

    log = Logger()

    def __init__(self, engine: sa.Engine, reactor: Any, max_batch: int = 2000) -> None:
        self._engine = engine
        self._reactor = reactor
        self._max_batch = max_batch
        self._queue: deque[Job] = deque()
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._stopped: Deferred = Deferred()
        #: Sizes of recent batches, for benchmarks and metrics.
        self.batches = 0
        self.jobs = 0
        #: Metrics hook, called on the writer thread after each batch with
        #: (jobs in it, seconds its transaction took).
        self.on_batch: Callable[[int, float], None] | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="eventbus-writer", daemon=True)
        self._thread.start()

    def submit_then(
        self,
        fn: Callable[..., Any],
        args: tuple,
        reply: Reply,
        committed: Committed | None = None,
        render: Render | None = None,
    ) -> None:
        """Queue ``fn(conn, *args)``; ``reply`` gets its outcome after the
        commit, without a Deferred per request (``Database.write`` makes one
        where a caller wants it)."""
        job = Job(fn, args, reply, committed, render)
        with self._cond:
            if self._stopping:
                raise BusError("unavailable", "the server is shutting down")
            self._queue.append(job)
            if len(self._queue) == 1:
                self._cond.notify()

    def stop(self) -> Deferred:
        """Run what is queued, then end the thread; fires when it has."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
        if self._thread is None:
            self._stopped.callback(None)
        return self._stopped

    # -- writer thread -------------------------------------------------

    def _run(self) -> None:
        conn = None
        try:
            last = 0
            while True:
                with self._cond:
                    while not self._queue and not self._stopping:
                        self._cond.wait()
                    if not self._queue:
                        break
                    gather = last >= GATHER_AFTER and len(self._queue) < last // 2 and not self._stopping
                if gather:
                    time.sleep(GATHER_SECONDS)
                with self._cond:
                    # Only this thread takes jobs: the queue is no shorter now.
                    n = min(len(self._queue), self._max_batch)
                    jobs = [self._queue.popleft() for _ in range(n)]
                if conn is None:
                    conn = self._connect()
                if conn is None:
                    results: list[Any] = [storage_unavailable()] * len(jobs)
                else:
                    started = time.perf_counter()
                    results = run_batch(conn, jobs)
                    if self.on_batch is not None:
                        self.on_batch(len(jobs), time.perf_counter() - started)
                    if conn.invalidated or conn.closed:
                        conn = None
                self.batches += 1
                self.jobs += len(jobs)
                last = len(jobs)
                self._reactor.callFromThread(deliver, jobs, rendered(jobs, results))
        finally:
            if conn is not None:
                conn.close()
            self._reactor.callFromThread(self._stopped.callback, None)

    def _connect(self) -> sa.Connection | None:
        try:
            return self._engine.connect()
        except Exception:
            self.log.failure("writer cannot connect to the database")
            return None


def run_batch(conn: sa.Connection, jobs: list[Job]) -> list[Any]:
    """Run ``jobs`` in one transaction on ``conn`` and commit: their results
    in order, a refusal or a failure each where one job caused it."""
    try:
        txn = conn.begin()
    except Exception:
        # No transaction at all (the database is locked by another
        # process past the busy timeout, or failing): nothing ran, and
        # trying each job alone would only wait that long for each.
        return [_fault()] + [Failure(storage_unavailable()) for _ in jobs[1:]]
    committing = False
    try:
        with txn:
            results = _run_jobs(conn, jobs)
            committing = True
        return results
    except Exception as e:
        if committing and _connection_lost(e):
            # The commit was sent, and may have been made, before the
            # connection broke: ``unavailable`` would promise it was not.
            GroupCommitWriter.log.failure("the connection to the database broke during a commit")
            return [Failure(OutcomeUnknown("the connection broke during the commit"))] * len(jobs)
        if len(jobs) == 1:
            return [_fault()]
        if _environmental(e):
            # The database itself is failing (full, I/O error, locked,
            # gone): it would fail each job alone too, one traceback each.
            return [_fault()] + [Failure(storage_unavailable()) for _ in jobs[1:]]
    # Something failed that no single job owned up to: run each alone.
    results = []
    for job in jobs:
        try:
            with conn.begin():
                results.extend(_run_jobs(conn, [job]))
        except Exception:
            results.append(_fault())
    return results


def _fault() -> Failure:
    GroupCommitWriter.log.failure("write transaction failed")
    return Failure(storage_unavailable())


#: SQLite primary result codes of a database that is failing as a whole:
#: BUSY, LOCKED, NOMEM, READONLY, IOERR, CORRUPT, FULL, CANTOPEN, PROTOCOL, NOTADB.
_SQLITE_ENVIRONMENT = frozenset({5, 6, 7, 8, 10, 11, 13, 14, 15, 26})
#: PostgreSQL SQLSTATE classes of the same (besides a lost connection, class
#: 08, see _connection_lost): insufficient resources, operator intervention,
#: system error.
_PG_ENVIRONMENT = ("53", "57", "58")


def _connection_lost(error: BaseException) -> bool:
    """Did the connection to the database break (SQLAlchemy saw a
    disconnect, or PostgreSQL's connection exception class)?"""
    if isinstance(error, sa.exc.DBAPIError) and error.connection_invalidated:
        return True
    state = getattr(getattr(error, "orig", error), "sqlstate", None)
    return isinstance(state, str) and state.startswith("08")


def _environmental(error: BaseException) -> bool:
    """Did the database fail, rather than one job's statements?"""
    if _connection_lost(error):
        return True
    # Wrapped by SQLAlchemy, or raised by the driver's own cursor.
    orig = getattr(error, "orig", error)
    code = getattr(orig, "sqlite_errorcode", None)
    if code is not None:
        return code & 0xFF in _SQLITE_ENVIRONMENT
    state = getattr(orig, "sqlstate", None)
    return isinstance(state, str) and (state[:2] in _PG_ENVIRONMENT or state == "55P03")


def storage_unavailable() -> BusError:
    return BusError("unavailable", "storage is failing; nothing was changed, retry")


def _run_jobs(conn: sa.Connection, jobs: list[Job]) -> list[Any]:
    """Run jobs in order inside the caller's transaction; refusals are values."""
    results: list[Any] = []
    i = 0
    while i < len(jobs):
        fn = jobs[i].fn
        batched = getattr(fn, "batched", None)
        if batched is not None:
            j = i + 1
            while j < len(jobs) and jobs[j].fn is fn:
                j += 1
            results.extend(batched(conn, [job.args for job in jobs[i:j]]))
            i = j
            continue
        try:
            results.append(fn(conn, *jobs[i].args))
        except BusError as e:
            results.append(e)
        i += 1
    return results


def rendered(jobs: list[Job], results: list[Any]) -> list[Any]:
    """``results``, each committed one passed through its job's ``render``."""
    out = []
    for job, result in zip(jobs, results):
        if job.render is not None and not isinstance(result, (BusError, Failure)):
            try:
                result = job.render(result)
            except Exception:
                GroupCommitWriter.log.failure("a committed write's answer could not be made")
                result = BusError("unavailable", "the write was stored, but its answer could not be made")
        out.append(result)
    return out


def deliver(jobs: list[Job], results: list[Any]) -> None:
    for job, result in zip(jobs, results):
        if job.committed is not None and not isinstance(result, (BusError, Failure)):
            try:
                job.committed(job.args, result)
            except Exception:
                GroupCommitWriter.log.failure("after-commit hook failed")
        try:
            job.reply(result)
        except Exception:
            # One reply's bug must not cost the rest of the batch theirs.
            GroupCommitWriter.log.failure("reply to a write failed")


def deferred_reply(d: Deferred) -> Reply:
    """A reply that fires ``d``: with the result, or failing with the
    BusError or Failure."""
    return partial(_fire, d)


def _fire(d: Deferred, outcome: Any) -> None:
    if isinstance(outcome, (BusError, Failure)):
        d.errback(outcome)
    else:
        d.callback(outcome)
