"""The services: streams and events, as Deferred-returning domain calls.

They translate a domain call into a storage transaction (reads on the
reader pool, changes through the group-commit writer) and tell the change
notifier what moved, so long polls wake at once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.internet.defer import Deferred
from zope.interface import implementer

from eventbus.interfaces import IDatabase, IEvents, IStreams
from eventbus.notify import ChangeNotifier
from eventbus.records import RETRY, UNPROCESSED, Marked, WriteAnswer, Written
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
        # Long polls on a deleted stream wake and find it gone.
        return self.db.write(q.delete_stream_txn, name, committed=self._deleted)

    def _deleted(self, args: tuple, _: None) -> None:
        self.notifier.changed(args[0])

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
        return self.db.write(q.write_events_txn, stream_name, bodies, now, key, committed=self._written)

    def write_then(
        self,
        stream_name: str,
        bodies: list[str],
        now: int,
        key: str | None,
        reply: Callable[[Any], None],
        render: Callable[[Written], Any],
    ) -> None:
        args = (stream_name, bodies, now, key)
        self.db.write_then(q.write_events_txn, args, reply, self._written, render)

    def _written(self, args: tuple, written: Written | WriteAnswer) -> None:
        if not written.duplicate:
            self.notifier.changed(args[0])

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
        return self.db.write(
            q.mark_event_txn, event_id, status, lease_id, now, visible, committed=self._marked
        )

    def mark(
        self, event_ids: list[str], status: int, lease_id: str | None, now: int, visible: Visible = None
    ) -> Deferred:
        return self.db.write(
            q.mark_events_txn, event_ids, status, lease_id, now, visible, committed=self._marked
        )

    def _marked(self, args: tuple, marked: Marked) -> None:
        # args: (event id or ids, status, ...); events back on offer wake long polls.
        if args[1] in (UNPROCESSED, RETRY):
            for name in marked.streams:
                self.notifier.changed(name)

    def stop_waiting(self) -> None:
        self.notifier.wake_all()
