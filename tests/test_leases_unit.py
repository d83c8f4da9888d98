"""Leases, redelivery and dead letters in the storage layer, on a real SQLite
file with an injected clock: every transaction takes ``now``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import sqlalchemy as sa

from eventbus import errors
from eventbus.records import DEAD, PROCESSED, UNPROCESSED
from eventbus.storage import migrate
from eventbus.storage import queries as q
from eventbus.storage.engines import make_engine

S = 1_000_000  # one second in microseconds
T0 = 1_000 * S


@pytest.fixture
def conn(tmp_path: Path) -> Iterator[sa.Connection]:
    url = f"sqlite:///{tmp_path / 'leases.db'}"
    migrate.upgrade(url)
    engine = make_engine(url, role="writer")
    with engine.connect() as c:
        yield c
    engine.dispose()


def txn(conn: sa.Connection, fn, *args):  # type: ignore[no-untyped-def]
    with conn.begin():
        return fn(conn, *args)


def test_expired_lease_redelivers_with_higher_count(conn: sa.Connection) -> None:
    txn(conn, q.create_stream_txn, "s", T0)
    [event] = txn(conn, q.write_events_txn, "s", ["1"], T0).events
    first = txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 10, 30, T0).events
    assert [(e.id, e.deliveries) for e in first] == [(event.id, 1)]
    # Still leased one microsecond before the end, offered again at the end.
    assert txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 10, 30, T0 + 30 * S - 1).events == []
    second = txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 10, 30, T0 + 30 * S).events
    assert [(e.id, e.deliveries) for e in second] == [(event.id, 2)]
    assert second[0].lease_id != first[0].lease_id


def test_dead_after_max_deliveries_by_sweep(conn: sa.Connection) -> None:
    txn(conn, q.create_stream_txn, "s", T0, 2)
    [event] = txn(conn, q.write_events_txn, "s", ["1"], T0).events
    now = T0
    for _ in range(2):
        assert len(txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 10, 10, now).events) == 1
        now += 10 * S
    swept = txn(conn, q.sweep_leases_txn, now, 100)
    assert swept.count == 1 and swept.streams == []  # dead: nothing to offer again
    [stored] = txn(conn, q.read_page_txn, "s", None, None, 10).events
    assert (stored.id, stored.status, stored.deliveries) == (event.id, DEAD, 2)
    _, stats = txn(conn, q.stats_txn, "s", now)
    assert (stats.unprocessed, stats.dead) == (0, 1)


def test_dead_at_next_lease_without_sweep(conn: sa.Connection) -> None:
    txn(conn, q.create_stream_txn, "s", T0, 1)
    a, b = txn(conn, q.write_events_txn, "s", ["1", "2"], T0).events
    assert [e.id for e in txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 1, 10, T0).events] == [a.id]
    later = txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 10, 10, T0 + 10 * S).events
    assert [e.id for e in later] == [b.id]
    statuses = {e.id: e.status for e in txn(conn, q.read_page_txn, "s", None, None, 10).events}
    assert statuses == {a.id: DEAD, b.id: UNPROCESSED}


def test_redrive_resets_deliveries(conn: sa.Connection) -> None:
    txn(conn, q.create_stream_txn, "s", T0, 1)
    [event] = txn(conn, q.write_events_txn, "s", ["1"], T0).events
    txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 10, 1, T0)
    txn(conn, q.sweep_leases_txn, T0 + S, 100)
    txn(conn, q.mark_event_txn, event.id, UNPROCESSED, None, T0 + 2 * S)
    [back] = txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 10, 1, T0 + 2 * S).events
    assert (back.id, back.deliveries) == (event.id, 1)


def test_mark_under_expired_lease_is_lost(conn: sa.Connection) -> None:
    txn(conn, q.create_stream_txn, "s", T0)
    txn(conn, q.write_events_txn, "s", ["1"], T0)
    [leased] = txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 10, 5, T0).events
    with pytest.raises(errors.BusError) as refused:
        txn(conn, q.mark_event_txn, leased.id, PROCESSED, leased.lease_id, T0 + 5 * S)
    assert refused.value.code == "lease_lost"
    txn(conn, q.mark_event_txn, leased.id, PROCESSED, leased.lease_id, T0 + 5 * S - 1)
    [stored] = txn(conn, q.read_page_txn, "s", None, None, 10).events
    assert stored.status == PROCESSED and stored.lease_id is None


def test_page_of_only_dead_letters_still_points_past_itself(conn: sa.Connection) -> None:
    txn(conn, q.create_stream_txn, "s", T0, 1)
    a, b, c = txn(conn, q.write_events_txn, "s", ["1", "2", "3"], T0).events
    txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 2, 1, T0)  # a and b: their one delivery
    page = txn(conn, q.lease_page_txn, "s", UNPROCESSED, None, 2, 1, T0 + S)
    assert page.events == [] and page.next_after_seq == b.seq  # both died; c is still ahead
    after = txn(conn, q.lease_page_txn, "s", UNPROCESSED, page.next_after_seq, 2, 1, T0 + S)
    assert [e.id for e in after.events] == [c.id]
