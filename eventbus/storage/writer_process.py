"""The SQLite writer in a process of its own.

A writer *thread* shares the GIL with the reactor thread, and the two hand
it over around every SQLite call and every socket call: that cost the
reactor 15 to 20 us of CPU per request at 64 connections (measured in
docs/benchmarks.rst), more than the writer's own work. A process has a GIL
of its own. The server sends each group commit's jobs to it over a socket
pair and reads the results back when the socket is readable, like any other.

Both ends are here. The server's end, :class:`ProcessWriter`, stands in for
:class:`~eventbus.storage.writer.GroupCommitWriter`. The child
(``python -m eventbus.storage.writer_process URL BUSY_TIMEOUT_MS``, its end
of the pair as fd 3) reads a frame of jobs, runs it as one transaction with
:func:`~eventbus.storage.writer.run_batch`, and writes a frame of results. A
frame is a 4-byte big-endian length and a pickle; a job is its function, its
arguments and its ``render``, which the child runs too: a write's answer
line is made here, not on the reactor thread (64 x 16 writes x1.10,
write_events x1.18). Failures are logged by the child, whose log the server
relays, and come back as ``unavailable``.

What crosses is kept to plain data, which pickle handles in C: functions go
by name (every write function is module-level), not as references, which
pickle resolves by importing their module again in every frame; a
:class:`~eventbus.records.WriteAnswer` comes back as a plain tuple of its
fields, not as a record, which pickle rebuilds by calling into Python for
each. A batch of 512 writes' answers pickled in 6 us instead of 490, and a
single write's two frames in 1.1 us instead of 8.6.

The child ends when the server closes its end: when the server stops it, and
when the server dies, once the batch in hand is done. If the child dies
first, the batch it held may or may not have been committed: its jobs fail
with :class:`~eventbus.errors.OutcomeUnknown` (their connections are closed
unanswered, as a crash would close them). The jobs queued behind it, and
writes until a new child has been started a moment later, are answered
``unavailable``: nothing was changed.
"""

from __future__ import annotations

import importlib
import os
import pickle
import select
import signal
import socket
import struct
import sys
import time
from collections import deque
from collections.abc import Iterable
from functools import partial
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.main import CONNECTION_DONE, CONNECTION_LOST
from twisted.internet.protocol import ProcessProtocol
from twisted.logger import Logger, globalLogBeginner, textFileLogObserver
from twisted.python.failure import Failure

from eventbus.errors import BusError, OutcomeUnknown
from eventbus.records import WriteAnswer
from eventbus.storage.writer import (
    Committed,
    Job,
    Render,
    Reply,
    deliver,
    rendered,
    run_batch,
    storage_unavailable,
)

_LENGTH = struct.Struct(">I")
#: The child's end of the socket pair.
CHILD_FD = 3
#: Bytes read from the socket at a time: a group commit's results in one go.
READ_SIZE = 1 << 20
#: Jobs per batch at most. Sending all that one turn of the reactor read
#: (1,024 requests from 64 x 16 clients) serialised the two processes: the
#: child committed while the reactor had nothing to read, then the reactor
#: answered while the child had nothing to write (the reactor idle 25-35%,
#: 29,000-37,000 writes/s). Half of that goes at once, the rest while the
#: reactor answers the first half: 42,000-47,000/s, the reactor 94% busy.
MAX_BATCH = 512
#: Seconds before a child that died is replaced (doubling, up to the cap),
#: so a child that cannot start does not spin.
RESTART_SECONDS = 0.1
RESTART_MAX_SECONDS = 5.0
#: How long the child keeps looking for its next frame before it sleeps in
#: a read, when the last one came within that long of its answer (writes
#: arriving one after another). Waking a process that sleeps costs this
#: machine 40-80 us, and its caches, before it can start; one that is still
#: looking starts at once: 1 x 1 writes p50 0.67 -> 0.58 ms, 64 x 16 x1.05.
#: At each look it gives up its CPU to anything else that can run, and once
#: writes stop coming close together it sleeps at once.
SPIN_SECONDS = 0.0006
#: How long the reactor keeps looking for the answer to a batch of one
#: write before it sleeps in its poll: a lone write means no other client
#: has anything for the reactor to do meanwhile, and waking it once the
#: child has answered costs as much as waking the child did (see
#: SPIN_SECONDS): 1 x 1 writes p50 0.39 -> 0.33 ms (x1.22), 4 x 1 x1.12,
#: 64 x 1, 64 x 16 and write_events unchanged. Not for a batch of several:
#: the other clients' requests keep the reactor busy, and a reactor that
#: looked instead took the CPU the child and the clients needed (64 x 1
#: x0.88).
ANSWER_SPIN_SECONDS = 0.001
#: The outcome of the writes a child held when it died: it may have committed them.
_ENDED = OutcomeUnknown("the writer process stopped during this write")


def _frame(message: Any) -> bytes:
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _LENGTH.pack(len(payload)) + payload


#: The name each function crosses as (None: a job without a render).
_NAMES: dict[Any, str | None] = {None: None}
#: The child's: each name's function, imported once.
_FUNCTIONS: dict[str | None, Any] = {None: None}


def _name(fn: Any) -> str | None:
    name = _NAMES.get(fn)
    if name is None and fn is not None:
        module, qualname = getattr(fn, "__module__", None), getattr(fn, "__qualname__", "")
        if module is None or getattr(sys.modules.get(module), qualname, None) is not fn:
            raise ValueError(f"{fn!r} is not a module-level function: it cannot cross to the writer process")
        name = _NAMES[fn] = f"{module}:{qualname}"
    return name


def _function(name: str | None) -> Any:
    fn = _FUNCTIONS.get(name)
    if fn is None and name is not None:
        module, _, qualname = name.partition(":")
        fn = _FUNCTIONS[name] = getattr(importlib.import_module(module), qualname)
    return fn


def _jobs_frame(jobs: Iterable[tuple[Any, tuple, Render | None]]) -> bytes:
    """A batch for the child: (function, arguments, render) each."""
    return _frame([(_name(fn), args, _name(render)) for fn, args, render in jobs])


#: A WriteAnswer again from the plain tuple it crossed as, in C.
_write_answer = partial(tuple.__new__, WriteAnswer)


def _received(results: list[Any]) -> list[Any]:
    """The results of a frame from the child as its jobs' callers take them."""
    return [_write_answer(r) if type(r) is tuple else _failure_of(r) for r in results]


def _failure_of(result: Any) -> Any:
    """An OutcomeUnknown crosses bare (a Failure does not pickle): a Failure again."""
    return Failure(result) if type(result) is OutcomeUnknown else result


class ProcessWriter:
    """The server's end: a queue of jobs and the child that runs them, one
    batch at a time. Everything here runs on the reactor thread."""

    log = Logger()

    def __init__(self, url: str, reactor: Any, busy_timeout_ms: int, max_batch: int = MAX_BATCH) -> None:
        self._argv = [sys.executable, "-m", __name__, url, str(int(busy_timeout_ms))]
        self._reactor = reactor
        self._max_batch = max_batch
        self._queue: deque[Job] = deque()
        #: The batch the child is running, or None when it is idle.
        self._in_hand: list[Job] | None = None
        self._child: _Child | None = None
        self._send_call: Any = None
        #: The next look for the child's answer, and when the looking stops.
        self._look_call: Any = None
        self._look_until = 0.0
        self._restart_call: Any = None
        self._restart_delay = RESTART_SECONDS
        self._stopping = False
        self._stopped: Deferred = Deferred()
        #: Batches and jobs run so far, for benchmarks and metrics.
        self.batches = 0
        self.jobs = 0
        #: Metrics hook, called on the reactor thread after each batch with
        #: (jobs in it, seconds its transaction took in the child).
        self.on_batch: Any = None

    def start(self) -> None:
        ours, theirs = socket.socketpair()
        try:
            child = _Child(self, _Channel(ours, self._reactor, self._results))
            self._reactor.spawnProcess(
                child,
                self._argv[0],
                self._argv,
                env=dict(os.environ),
                childFDs={0: "w", 1: "r", 2: "r", CHILD_FD: theirs.fileno()},
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the child has its copy
        self._child = child

    def submit_then(
        self,
        fn: Any,
        args: tuple,
        reply: Reply,
        committed: Committed | None = None,
        render: Render | None = None,
    ) -> None:
        """Queue ``fn(conn, *args)``; ``reply`` gets its outcome after the
        commit, rendered by the child when ``render`` is given."""
        if self._stopping:
            raise BusError("unavailable", "the server is shutting down")
        if self._child is None:
            raise BusError("unavailable", "the writer is restarting; nothing was changed, retry")
        self._queue.append(Job(fn, args, reply, committed, render))
        if self._in_hand is None and self._send_call is None:
            # At the end of this turn of the reactor: every request read in
            # it goes into the same batch.
            self._send_call = self._reactor.callLater(0, self._send)

    def stop(self) -> Deferred:
        """Run what is queued, then end the child; fires when it has ended."""
        self._stopping = True
        if self._restart_call is not None and self._restart_call.active():
            self._restart_call.cancel()
            self._restart_call = None
        if self._child is None:
            self._refuse_queued()
            if not self._stopped.called:
                self._stopped.callback(None)
        elif self._in_hand is None and not self._queue:
            self._child.channel.close()
        return self._stopped

    # -- batches out and results in ------------------------------------------

    def _send(self) -> None:
        self._send_call = None
        if self._in_hand is not None or not self._queue or self._child is None:
            return
        n = min(len(self._queue), self._max_batch)
        jobs = [self._queue.popleft() for _ in range(n)]
        try:
            frame = _jobs_frame((job.fn, job.args, job.render) for job in jobs)
        except Exception:
            # A job that cannot cross to the child is a bug in its caller.
            self.log.failure("a write could not be sent to the writer process")
            deliver(jobs, [Failure(storage_unavailable())] * len(jobs))
            self._send()
            return
        self._in_hand = jobs
        self._child.channel.send(frame)
        if n == 1 and self._look_call is None:
            self._look_until = self._reactor.seconds() + ANSWER_SPIN_SECONDS
            self._look_call = self._reactor.callLater(0, self._look)

    def _look(self) -> None:
        """One look for the child's answer, by a turn of the reactor that
        polls without sleeping (a call due now makes its poll's timeout 0);
        the CPU goes to anything else that can run in between."""
        self._look_call = None
        if self._in_hand is None or self._reactor.seconds() > self._look_until:
            return
        os.sched_yield()
        self._look_call = self._reactor.callLater(0, self._look)

    def _results(self, message: tuple[list[Any], float]) -> None:
        results, seconds = message
        results = _received(results)
        jobs, self._in_hand = self._in_hand, None
        if jobs is None:
            return
        self._restart_delay = RESTART_SECONDS
        self.batches += 1
        self.jobs += len(jobs)
        # The child is idle: what queued meanwhile goes first, so it commits
        # while these answers are written.
        if self._queue:
            self._send()
        elif self._stopping and self._child is not None:
            self._child.channel.close()
        if self.on_batch is not None:
            self.on_batch(len(jobs), seconds)
        deliver(jobs, results)

    # -- the child's life ----------------------------------------------------------

    def _ended(self, child: _Child, reason: Failure) -> None:
        if child is not self._child:
            return
        self._child = None
        child.channel.close(now=True)
        lost, self._in_hand = self._in_hand or [], None
        if lost:
            deliver(lost, [Failure(_ENDED)] * len(lost))
        self._refuse_queued()
        if self._stopping:
            if not self._stopped.called:
                self._stopped.callback(None)
            return
        self.log.error("the writer process ended ({why}); starting another", why=reason.value)
        self._restart_later()

    def _restart_later(self) -> None:
        delay, self._restart_delay = self._restart_delay, min(self._restart_delay * 2, RESTART_MAX_SECONDS)
        self._restart_call = self._reactor.callLater(delay, self._restart)

    def _restart(self) -> None:
        self._restart_call = None
        if self._stopping:
            return
        try:
            self.start()
        except Exception:
            self.log.failure("the writer process could not be started; trying again")
            self._restart_later()

    def _refuse_queued(self) -> None:
        """Answer ``unavailable`` the jobs no child will run (until a new
        child starts, new writes are refused at once)."""
        queued = list(self._queue)
        self._queue.clear()
        if queued:
            deliver(queued, [Failure(storage_unavailable())] * len(queued))


class _Channel:
    """The server's end of the socket pair, polled by the reactor: a frame
    is sent at once (not on the reactor's next turn), results are read a
    megabyte at a time (a group commit's results in one read)."""

    def __init__(self, sock: socket.socket, reactor: Any, on_message: Any) -> None:
        sock.setblocking(False)
        self._sock = sock
        self._reactor = reactor
        self._on_message = on_message
        self._chunk = memoryview(bytearray(READ_SIZE))  # read into, never allocated again
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._closing = False
        self._closed = False
        reactor.addReader(self)

    def fileno(self) -> int:
        return -1 if self._closed else self._sock.fileno()

    def logPrefix(self) -> str:
        return "writer-process"

    def send(self, frame: bytes) -> None:
        if self._closed:
            return
        if self._outbox:
            self._outbox += frame
            return
        try:
            sent = self._sock.send(frame)
        except BlockingIOError:
            sent = 0
        except OSError:
            return  # the child is gone: its end (processEnded) answers the batch
        if sent < len(frame):
            self._outbox += memoryview(frame)[sent:]
            self._reactor.addWriter(self)

    def doWrite(self) -> Any:
        try:
            sent = self._sock.send(self._outbox)
        except BlockingIOError:
            return None
        except OSError:
            return CONNECTION_LOST
        del self._outbox[:sent]
        if not self._outbox:
            self._reactor.removeWriter(self)
            if self._closing:
                self._shutdown()
        return None

    def doRead(self) -> Any:
        try:
            got = self._sock.recv_into(self._chunk)
        except BlockingIOError:
            return None
        except OSError:
            return CONNECTION_LOST
        if not got:
            return CONNECTION_DONE
        inbox = self._inbox
        inbox += self._chunk[:got]
        start = 0
        while len(inbox) - start >= _LENGTH.size:
            (n,) = _LENGTH.unpack_from(inbox, start)
            end = start + _LENGTH.size + n
            if len(inbox) < end:
                break
            message = pickle.loads(memoryview(inbox)[start + _LENGTH.size : end])
            start = end
            self._on_message(message)
        del inbox[:start]
        return None

    def close(self, now: bool = False) -> None:
        """End our side: the child reads the end of its input and exits
        (once what is being sent has gone, unless ``now``)."""
        self._closing = True
        if now or not self._outbox:
            self._shutdown()

    def _shutdown(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._reactor.removeReader(self)
        self._reactor.removeWriter(self)
        self._sock.close()

    def connectionLost(self, reason: Failure) -> None:
        # The child closed its end (it is ending; processEnded follows).
        self._shutdown()


class _Child(ProcessProtocol):
    """The child process as the reactor sees it: its channel, its log."""

    log = Logger(namespace="eventbus.storage.writer_process.child")

    def __init__(self, writer: ProcessWriter, channel: _Channel) -> None:
        self.writer = writer
        self.channel = channel
        self._log_tail: dict[int, bytes] = {}

    def childDataReceived(self, fd: int, data: bytes) -> None:
        """The child's log lines (stdout or stderr), into the server's log."""
        *lines, self._log_tail[fd] = (self._log_tail.get(fd, b"") + data).split(b"\n")
        for line in lines:
            if line.strip():
                self.log.error("{line}", line=line.decode("utf-8", "replace"))

    def processEnded(self, reason: Failure) -> None:
        self.writer._ended(self, reason)


# -- the child ------------------------------------------------------------------


def _sendable(result: Any) -> Any:
    if type(result) is WriteAnswer:
        return tuple(result)  # made a WriteAnswer again by _received
    if isinstance(result, Failure):
        if result.check(OutcomeUnknown):
            return result.value  # made a Failure again by _received
        return storage_unavailable()  # the failure is logged here; its refusal crosses
    if type(result) is tuple:
        # No write function returns a plain tuple (they return records,
        # numbers or None): one would be taken for a WriteAnswer.
        Logger().error("a write returned a plain tuple of {n} items, which cannot cross", n=len(result))
        return storage_unavailable()
    return result


def _answer(results: list[Any], seconds: float) -> bytes:
    sendable = [_sendable(r) for r in results]
    try:
        return _frame((sendable, seconds))
    except Exception:
        Logger().failure("a write's result could not be sent back")
        return _frame(([storage_unavailable()] * len(results), seconds))


def _spin(ready: select.poll, seconds: float) -> None:
    """Until the next frame is there or ``seconds`` have passed, look for it
    without sleeping, yielding the CPU between looks."""
    deadline = time.perf_counter() + seconds
    while not ready.poll(0) and time.perf_counter() < deadline:
        os.sched_yield()


def _read_frame(source: Any) -> Any:
    """The next message, or None at the end of input."""
    head = source.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        return None
    (n,) = _LENGTH.unpack(head)
    payload = source.read(n)
    if len(payload) < n:
        return None
    return pickle.loads(payload)


def main() -> None:
    """The child: run batches until the server closes its end."""
    from eventbus.storage.engines import make_engine

    # The server ends us (by closing its end) once its writes are done; a
    # signal to the whole process group (Ctrl-C, a service manager) must not
    # end us first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    globalLogBeginner.beginLoggingTo([textFileLogObserver(sys.stderr)], redirectStandardIO=False)
    url, busy_timeout_ms = sys.argv[1], int(sys.argv[2])
    engine = make_engine(url, role="writer", pool_size=1, busy_timeout_ms=busy_timeout_ms)
    log = Logger(namespace="eventbus.storage.writer")
    sock = socket.socket(fileno=CHILD_FD)
    source = sock.makefile("rb")
    # Only one frame is out at a time (the server sends the next batch once
    # it has these results), so nothing waits in the reader's buffer: the
    # socket tells whether the next frame is there.
    ready = select.poll()
    ready.register(sock.fileno(), select.POLLIN)
    answered = float("-inf")
    spin = False
    conn = None
    try:
        while True:
            if spin:
                _spin(ready, SPIN_SECONDS)
            jobs = _read_frame(source)
            if jobs is None:
                break
            started = time.perf_counter()
            spin = started - answered <= SPIN_SECONDS
            if conn is None:
                try:
                    conn = engine.connect()
                except Exception:
                    log.failure("writer cannot connect to the database")
            batch = [Job(_function(fn), args, None, None, _function(render)) for fn, args, render in jobs]
            results = run_batch(conn, batch) if conn is not None else [storage_unavailable()] * len(batch)
            seconds = time.perf_counter() - started
            if conn is not None and (conn.invalidated or conn.closed):
                conn = None
            sock.sendall(_answer(rendered(batch, results), seconds))
            answered = time.perf_counter()
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server is gone
    finally:
        if conn is not None:
            conn.close()
        engine.dispose()


if __name__ == "__main__":
    main()
