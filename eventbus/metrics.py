"""Prometheus instruments, and the thin wrappers that feed them.

Only built when the admin listener is on (``--admin``): without it nothing
here runs and the request path pays nothing. The wrappers are decorators of
the layers' own interfaces, put in place by the composition root
(:func:`eventbus.server.build_service`), so no layer knows about metrics:

- :class:`MeteredDispatcher` times each request from the moment its line is
  read until its response line exists, and counts it by operation and
  outcome (``ok`` or the error code);
- :class:`MeteredEvents` counts events written, leased and marked;
- :class:`MeteredDatabase` times read transactions on the reader threads;
- the group-commit writer reports each batch (jobs, seconds) through its
  ``on_batch`` hook.

Per-stream gauges (counts by status, backlog) are set from periodic
snapshots taken by :class:`eventbus.admin.Sampler`, not per request.

Each :class:`Metrics` has its own registry, so several servers in one
process (tests) do not collide.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.process_collector import ProcessCollector
from twisted.internet.defer import Deferred

from eventbus.records import STATUS_NAMES, WriteAnswer
from eventbus.responses import Unanswered

#: Request latencies: sub-millisecond reads up to 30 s long polls.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
TXN_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1, 5)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)
STREAM_STATUSES = ("unprocessed", "retry", "leased", "processed", "dead")

# No ``*_created`` series beside every counter: they double the output and
# Prometheus does not need them.
disable_created_metrics()


class Metrics:
    """The registry and every instrument of one server."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        self.requests = Counter(
            "eventbus_requests",
            "Requests answered, by operation and outcome (ok or the error code).",
            ["operation", "outcome"],
            registry=r,
        )
        self.request_seconds = Histogram(
            "eventbus_request_duration_seconds",
            "From the request line read to its response ready (long polls include their wait).",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.written = Counter(
            "eventbus_events_written", "Events written (duplicates by key not counted).", registry=r
        )
        self.duplicates = Counter(
            "eventbus_events_duplicate", "Writes answered with an earlier event of the same key.", registry=r
        )
        self.leased = Counter("eventbus_events_leased", "Events handed out under a lease.", registry=r)
        self.marked = Counter(
            "eventbus_events_marked", "Events marked, by the status they were given.", ["status"], registry=r
        )
        self.batch_jobs = Histogram(
            "eventbus_group_commit_jobs", "Write jobs per group commit.", buckets=BATCH_BUCKETS, registry=r
        )
        self.txn_seconds = Histogram(
            "eventbus_storage_transaction_seconds",
            "Storage transactions: a whole group commit (write_batch) or one read.",
            ["kind"],
            buckets=TXN_BUCKETS,
            registry=r,
        )
        self.connections = Gauge("eventbus_connections", "Open client connections.", registry=r)
        self.in_flight = Gauge("eventbus_requests_in_flight", "Requests being worked on.", registry=r)
        self.long_polls = Gauge("eventbus_long_polls_waiting", "Long polls waiting for events.", registry=r)
        self.streams = Gauge("eventbus_streams", "Streams (as of the last snapshot).", registry=r)
        self.stream_events = Gauge(
            "eventbus_stream_events",
            "Events of a stream by status (snapshot).",
            ["stream", "status"],
            registry=r,
        )
        self.backlog = Gauge(
            "eventbus_stream_backlog", "Unprocessed events of a stream (snapshot).", ["stream"], registry=r
        )
        self.dead = Gauge("eventbus_events_dead", "Dead events in all streams (snapshot).", registry=r)
        self.snapshot_time = Gauge(
            "eventbus_stream_stats_timestamp_seconds",
            "When the per-stream figures were read (Unix time).",
            registry=r,
        )
        self._children: dict[tuple[str, str], Any] = {}
        self._latency: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._known_streams: set[str] = set()
        #: Plain running totals, read by the status page's rate charts.
        self.totals = {"requests": 0, "errors": 0, "written": 0, "leased": 0, "processed": 0, "retried": 0}

    # -- feeding ------------------------------------------------------------------

    def request_done(self, operation: str, outcome: str, seconds: float) -> None:
        key = (operation, outcome)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self.requests.labels(operation, outcome)
        child.inc()
        latency = self._latency.get(operation)
        if latency is None:
            latency = self._latency[operation] = self.request_seconds.labels(operation)
        latency.observe(seconds)
        self.totals["requests"] += 1
        if outcome != "ok":
            self.totals["errors"] += 1

    def events_written(self, count: int, duplicate: bool) -> None:
        if duplicate:
            self.duplicates.inc(count)
        else:
            self.written.inc(count)
            self.totals["written"] += count

    def events_leased(self, count: int) -> None:
        if count:
            self.leased.inc(count)
            self.totals["leased"] += count

    def events_marked(self, status: int, count: int) -> None:
        if count:
            self.marked.labels(STATUS_NAMES.get(status, str(status))).inc(count)
            if status == 1:
                self.totals["processed"] += count
            elif status == 2:
                self.totals["retried"] += count

    def observe_batch(self, jobs: int, seconds: float) -> None:
        """The writer's ``on_batch`` hook (called on PostgreSQL's writer
        thread, which must never die of a metric: nothing escapes; for
        SQLite's writer process, on the reactor thread)."""
        try:
            self.batch_jobs.observe(jobs)
            self.txn_seconds.labels("write_batch").observe(seconds)
        except Exception:  # noqa: BLE001
            pass

    def observe_read(self, seconds: float) -> None:
        self.txn_seconds.labels("read").observe(seconds)

    def set_streams(self, rows: Iterable[tuple[str, dict[str, int]]], when: float) -> None:
        """A snapshot of every stream's counts: set the gauges, drop the gone."""
        seen = set()
        dead = 0
        for name, counts in rows:
            seen.add(name)
            for status in STREAM_STATUSES:
                self.stream_events.labels(name, status).set(counts.get(status, 0))
            self.backlog.labels(name).set(counts.get("unprocessed", 0))
            dead += counts.get("dead", 0)
        with self._lock:
            for gone in self._known_streams - seen:
                for status in STREAM_STATUSES:
                    _forget(self.stream_events, gone, status)
                _forget(self.backlog, gone)
            self._known_streams = seen
        self.streams.set(len(seen))
        self.dead.set(dead)
        self.snapshot_time.set(when)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)


def _forget(gauge: Gauge, *labels: str) -> None:
    try:
        gauge.remove(*labels)
    except KeyError:
        pass


def outcome_of(line: bytes) -> str:
    """``ok``, or the error code, of a response line (cheaply: success lines,
    possibly megabytes of events, are not parsed)."""
    if isinstance(line, Unanswered):
        return "unanswered"
    head = line[:300]
    at = head.find(b'"status":')
    if at >= 0 and head.startswith(b"true", at + 9):
        return "ok"
    try:
        response = orjson.loads(line)
    except orjson.JSONDecodeError:
        return "unknown"
    if not isinstance(response, dict):
        return "unknown"
    if response.get("status") is True:
        return "ok"
    return str(response.get("code") or "error")


class MeteredDispatcher:
    """The dispatcher, timing and counting every request it prepares."""

    def __init__(self, inner: Any, metrics: Metrics, clock: Callable[[], float] = time.perf_counter) -> None:
        self._inner = inner
        self._metrics = metrics
        self._clock = clock

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def prepare(self, line: bytes, memo: Any = None) -> Any:
        started = self._clock()
        request = self._inner.prepare(line, memo)
        call, args = request.call, request.args
        operation = request.operation
        metrics = self._metrics
        clock = self._clock

        def done(response: bytes) -> bytes:
            metrics.request_done(operation, outcome_of(response), clock() - started)
            return response

        def timed_run(answer: Callable[[bytes], None] | None = None) -> Any:
            if answer is not None:
                # It answers later through ``answer``, or refuses at once with a line.
                result = call(*args, lambda line: answer(done(line)))
                return None if result is None else done(result)
            result = call(*args)
            if isinstance(result, Deferred):
                return result.addCallback(done)
            return done(result)

        # The same object, not a copy: a request verified in a thread sets
        # its code on it later, and the protocol reads it there.
        request.call, request.args = timed_run, ()
        return request


class MeteredEvents:
    """The events service, counting what its calls did."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def write(self, *args: Any, **kwargs: Any) -> Deferred:
        return self._inner.write(*args, **kwargs).addCallback(self._written)

    def _written(self, written: Any) -> Any:
        self._metrics.events_written(written.count, bool(written.duplicate))
        return written

    def write_then(
        self, stream_name: str, bodies: list[str], now: int, key: str | None, reply: Any, render: Any
    ) -> None:
        def counted(outcome: Any) -> None:
            if isinstance(outcome, WriteAnswer):
                self._written(outcome)
            reply(outcome)

        self._inner.write_then(stream_name, bodies, now, key, counted, render)

    def lease(self, *args: Any, **kwargs: Any) -> Deferred:
        return self._inner.lease(*args, **kwargs).addCallback(self._leased)

    def _leased(self, page: Any) -> Any:
        self._metrics.events_leased(len(page.events))
        return page

    def mark_one(self, event_id: str, status: int, *args: Any, **kwargs: Any) -> Deferred:
        d = self._inner.mark_one(event_id, status, *args, **kwargs)
        return d.addCallback(self._marked, status)

    def mark(self, event_ids: list[str], status: int, *args: Any, **kwargs: Any) -> Deferred:
        return self._inner.mark(event_ids, status, *args, **kwargs).addCallback(self._marked, status)

    def _marked(self, marked: Any, status: int) -> Any:
        self._metrics.events_marked(status, marked.marked)
        return marked


class MeteredDatabase:
    """The database as the services see it, timing each read transaction
    on the reader thread that runs it."""

    def __init__(self, inner: Any, metrics: Metrics) -> None:
        self._inner = inner
        self._metrics = metrics

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    def read(self, fn: Callable[..., Any], *args: Any) -> Deferred:
        metrics = self._metrics

        def timed_txn(conn: Any, *a: Any) -> Any:
            started = time.perf_counter()
            try:
                return fn(conn, *a)
            finally:
                metrics.observe_read(time.perf_counter() - started)

        timed_txn.__name__ = getattr(fn, "__name__", "read_txn")
        return self._inner.read(timed_txn, *args)

    def write(self, fn: Callable[..., Any], *args: Any, committed: Any = None) -> Deferred:
        # Not wrapped: the writer batches by function identity; it reports
        # whole batches itself (on_batch).
        return self._inner.write(fn, *args, committed=committed)
