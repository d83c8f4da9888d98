"""The event life cycle against a simple model (hypothesis state machine).

Writes, leases, lease expiries (the clock is injected: every storage call
takes ``now``), sweeps and marks in any order, on a real SQLite file and on
PostgreSQL: no event is lost, none is held by two leaseholders at once, and
statuses and delivery counts are what the model says. Each run has a stream
of its own in one database per backend.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import hypothesis.strategies as st
import sqlalchemy as sa
from hypothesis import settings
from hypothesis.stateful import (
    RuleBasedStateMachine,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

from eventbus import errors
from eventbus.records import DEAD, PROCESSED, RETRY, UNPROCESSED
from eventbus.storage import migrate
from eventbus.storage import queries as q
from eventbus.storage.engines import make_engine

MAX_DELIVERIES = 3
SECOND = 1_000_000
_runs = itertools.count()


@dataclass
class ModelEvent:
    id: str
    status: int = UNPROCESSED
    deliveries: int = 0
    lease: str | None = None
    expires: int | None = None

    def leased_at(self, now: int) -> bool:
        return self.expires is not None and self.expires > now


@dataclass
class Model:
    events: list[ModelEvent] = field(default_factory=list)

    def by_id(self, event_id: str) -> ModelEvent:
        return next(e for e in self.events if e.id == event_id)


class Lifecycle(RuleBasedStateMachine):
    def __init__(self, engine: sa.Engine) -> None:
        super().__init__()
        self.conn = engine.connect()
        self.s = f"s{next(_runs)}"
        self.now = 1_000 * SECOND
        self.model = Model()
        self.txn(q.create_stream_txn, self.s, self.now, MAX_DELIVERIES)
        # Leases handed out and not yet checked off: (event id, lease id).
        self.handed: list[tuple[str, str]] = []

    def txn(self, fn, *args):  # type: ignore[no-untyped-def]
        with self.conn.begin():
            return fn(self.conn, *args)

    def teardown(self) -> None:
        # Its events go too, so no later run's sweep meets this run's leases.
        self.txn(q.delete_stream_txn, self.s)
        self.conn.close()

    @rule(n=st.integers(1, 5))
    def write(self, n: int) -> None:
        written = self.txn(q.write_events_txn, self.s, [str(i) for i in range(n)], self.now)
        self.model.events += [ModelEvent(e.id) for e in written.events]

    @rule(seconds=st.integers(0, 40))
    def advance(self, seconds: int) -> None:
        self.now += seconds * SECOND

    @rule(status=st.sampled_from([UNPROCESSED, RETRY]), limit=st.integers(1, 4), lease=st.integers(1, 30))
    def lease(self, status: int, limit: int, lease: int) -> None:
        # The model: the first `limit` offerable events of `status`; those
        # already delivered MAX_DELIVERIES times die instead.
        offerable = [e for e in self.model.events if e.status == status and not e.leased_at(self.now)]
        chosen = offerable[:limit]
        expected = []
        for e in chosen:
            if e.deliveries >= MAX_DELIVERIES:
                e.status, e.lease, e.expires = DEAD, None, None
            else:
                expected.append(e)
        page = self.txn(q.lease_page_txn, self.s, status, None, limit, lease, self.now)
        assert [ev.id for ev in page.events] == [e.id for e in expected]
        for ev in page.events:
            e = self.model.by_id(ev.id)
            e.deliveries += 1
            e.lease, e.expires = ev.lease_id, self.now + lease * SECOND
            assert ev.deliveries == e.deliveries
            self.handed.append((ev.id, ev.lease_id))

    @rule()
    def sweep(self) -> None:
        self.txn(q.sweep_leases_txn, self.now, 1000)
        for e in self.model.events:
            if e.expires is not None and e.expires <= self.now:
                if e.deliveries >= MAX_DELIVERIES:
                    e.status = DEAD
                e.lease, e.expires = None, None

    @precondition(lambda self: self.handed)
    @rule(data=st.data(), status=st.sampled_from([UNPROCESSED, PROCESSED, RETRY, DEAD]))
    def mark_under_lease(self, data: st.DataObject, status: int) -> None:
        event_id, lease_id = data.draw(st.sampled_from(self.handed))
        e = self.model.by_id(event_id)
        current = e.lease == lease_id and e.leased_at(self.now)
        try:
            self.txn(q.mark_event_txn, event_id, status, lease_id, self.now)
            refused = None
        except errors.BusError as err:
            refused = err.code
        if current:
            assert refused is None
            self._apply_mark(e, status)
        else:
            assert refused == "lease_lost"

    @precondition(lambda self: self.model.events)
    @rule(data=st.data(), status=st.sampled_from([UNPROCESSED, PROCESSED, RETRY, DEAD]))
    def mark_plain(self, data: st.DataObject, status: int) -> None:
        e = data.draw(st.sampled_from(self.model.events))
        self.txn(q.mark_event_txn, e.id, status, None, self.now)
        self._apply_mark(e, status)

    def _apply_mark(self, e: ModelEvent, status: int) -> None:
        if e.status == DEAD and status in (UNPROCESSED, RETRY):
            e.deliveries = 0
        e.status, e.lease, e.expires = status, None, None

    @invariant()
    def storage_matches_model(self) -> None:
        page = self.txn(q.read_page_txn, self.s, None, None, 10_000)
        stored = [(ev.id, ev.status, ev.deliveries) for ev in page.events]
        assert stored == [(e.id, e.status, e.deliveries) for e in self.model.events]
        leased_now = [
            ev.id for ev in page.events if ev.lease_expires is not None and ev.lease_expires > self.now
        ]
        assert leased_now == [e.id for e in self.model.events if e.leased_at(self.now)]

    @invariant()
    def stats_match_model(self) -> None:
        _, stats = self.txn(q.stats_txn, self.s, self.now)
        by_status = [sum(1 for e in self.model.events if e.status == s) for s in range(4)]
        assert [stats.unprocessed, stats.processed, stats.retry, stats.dead] == by_status
        assert stats.total == len(self.model.events)
        assert stats.leased == sum(1 for e in self.model.events if e.leased_at(self.now))


def test_lifecycle(database_url: str) -> None:
    migrate.upgrade(database_url)
    engine = make_engine(database_url, role="writer")
    try:
        checks = settings(max_examples=60, stateful_step_count=40, deadline=None)
        run_state_machine_as_test(lambda: Lifecycle(engine), settings=checks)
    finally:
        engine.dispose()
