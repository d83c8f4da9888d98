"""The services: streams and events, as Deferred-returning domain calls.

They translate a domain call into a storage transaction (reads on the
reader pool, changes through the group-commit writer) and tell the change
notifier what moved, so long polls wake at once.
"""

from __future__ import annotations

from collections.abc import Callable

from twisted.internet.defer import Deferred
from zope.interface import implementer

from eventbus.interfaces import IDatabase, IEvents, IStreams
from eventbus.notify import ChangeNotifier
from eventbus.records import RETRY, UNPROCESSED, Marked, Written
from eventbus.storage import queries as q

#: Which streams' events a caller may touch (None: all of them).
Visible = Callable[[str], bool] | None


@implementer(IStreams)
class Streams:
    def __init__(self, db: IDatabase, notifier: ChangeNotifier) -> None:
        self.db = db
        self.notifier = notifier

    def create(
        self, name: str, now: int, max_deliveries: int | None = None, retention_seconds: int | None = None
    ) -> Deferred:
        return self.db.write(q.create_stream_txn, name, now, max_deliveries, retention_seconds)

    def delete(self, name: str) -> Deferred:
        d = self.db.write(q.delete_stream_txn, name)
        # Long polls on a deleted stream wake and find it gone.
        d.addCallback(lambda _: self.notifier.changed(name))
        return _detached(d)

    def stats(self, name: str, now: int) -> Deferred:
        return self.db.read(q.stats_txn, name, now)

    def list(self) -> Deferred:
        return self.db.read(q.list_streams_txn)


@implementer(IEvents)
class Events:
    def __init__(self, db: IDatabase, notifier: ChangeNotifier) -> None:
        self.db = db
        self.notifier = notifier

    def write(self, stream_name: str, bodies: list[str], now: int, key: str | None = None) -> Deferred:
        d = self.db.write(q.write_events_txn, stream_name, bodies, now, key)
        d.addCallback(self._written, stream_name)
        return _detached(d)

    def _written(self, written: Written, stream_name: str) -> Written:
        if not written.duplicate:
            self.notifier.changed(stream_name)
        return written

    def read(self, stream_name: str, status: int | None, after_seq: int | None, limit: int) -> Deferred:
        return self.db.read(q.read_page_txn, stream_name, status, after_seq, limit)

    def lease(
        self,
        stream_name: str,
        status: int,
        after_seq: int | None,
        limit: int,
        lease_seconds: int,
        now: int,
    ) -> Deferred:
        return self.db.write(q.lease_page_txn, stream_name, status, after_seq, limit, lease_seconds, now)

    def version(self, stream_name: str) -> int:
        return self.notifier.version(stream_name)

    def wait(self, stream_name: str, since: int, timeout: float) -> Deferred:
        return self.notifier.wait(stream_name, since, timeout)

    def mark_one(
        self, event_id: str, status: int, lease_id: str | None, now: int, visible: Visible = None
    ) -> Deferred:
        d = self.db.write(q.mark_event_txn, event_id, status, lease_id, now, visible)
        d.addCallback(self._marked, status)
        return _detached(d)

    def mark(
        self, event_ids: list[str], status: int, lease_id: str | None, now: int, visible: Visible = None
    ) -> Deferred:
        d = self.db.write(q.mark_events_txn, event_ids, status, lease_id, now, visible)
        d.addCallback(self._marked, status)
        return _detached(d)

    def _marked(self, marked: Marked, status: int) -> Marked:
        if status in (UNPROCESSED, RETRY):
            for name in marked.streams:
                self.notifier.changed(name)
        return marked

    def stop_waiting(self) -> None:
        self.notifier.wake_all()


def _detached(d: Deferred) -> Deferred:
    """The caller's own Deferred for a write: a caller that goes away cancels
    only its copy, so the wake-ups chained above still run once it commits."""
    out: Deferred = Deferred()
    d.chainDeferred(out)
    return out
