"""The copy command: an SQLite database moved into an empty one (PostgreSQL,
or SQLite again), keeping ids, order, statuses, deliveries, leases and keys.

The source has streams with and without settings, an empty stream, events in
every status, redelivered and dead-lettered events, events under a live lease
and an expired one, and idempotency keys.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from eventbus import copydb
from eventbus.records import DEAD, PROCESSED, RETRY, UNPROCESSED
from eventbus.storage import migrate
from eventbus.storage import queries as q
from eventbus.storage.engines import make_engine
from eventbus.storage.model import events, stream_counts, streams
from tests.busclient import LineClient
from tests.pg import PgAdmin
from tests.servers import ROOT, ServerProcess

US = 1_000_000
NOW = 1_800_000_000 * US  # the source's "now"; leases below expire around it


def txn(engine: sa.Engine, fn: Any, *args: Any) -> Any:
    with engine.connect() as conn, conn.begin():
        return fn(conn, *args)


def dump(url: str) -> dict[str, list[tuple]]:
    """Every row of every table, in key order."""
    engine = make_engine(url, role="reader")
    try:
        with engine.connect() as conn:
            return {
                t.name: [tuple(r) for r in conn.execute(sa.select(t).order_by(*t.primary_key.columns))]
                for t in (streams, events, stream_counts)
            }
    finally:
        engine.dispose()


@pytest.fixture
def source(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'source.db'}"
    migrate.upgrade(url)
    engine = make_engine(url, role="writer")
    try:
        txn(engine, q.create_stream_txn, "orders", NOW - 100 * US, 2, None)
        txn(engine, q.create_stream_txn, "audit", NOW - 90 * US, None, 86_400)
        txn(engine, q.create_stream_txn, "empty", NOW - 80 * US, None, None)
        orders = [
            e.id
            for e in txn(
                engine, q.write_events_txn, "orders", [f'{{"n":{n}}}' for n in range(12)], NOW
            ).events
        ]
        txn(engine, q.write_events_txn, "audit", ['"a1"'], NOW - 50 * US, "key-1")
        txn(engine, q.write_events_txn, "audit", ['"a2"', '"a3"'], NOW - 40 * US)
        txn(engine, q.mark_events_txn, orders[0:2], PROCESSED, None, NOW)
        txn(engine, q.mark_events_txn, orders[2:4], RETRY, None, NOW)
        txn(engine, q.mark_events_txn, orders[4:5], DEAD, None, NOW)
        # Two deliveries that ran out: dead by max_deliveries.
        for k in range(2):
            txn(engine, q.lease_page_txn, "orders", UNPROCESSED, None, 1, 1, NOW + k * 2 * US)
        txn(engine, q.sweep_leases_txn, NOW + 10 * US, 100)
        # Live leases (an hour) on two unprocessed events and a retry one; an
        # expired lease, not swept yet, on another.
        txn(engine, q.lease_page_txn, "orders", UNPROCESSED, None, 2, 3600, NOW + 10 * US)
        txn(engine, q.lease_page_txn, "orders", RETRY, None, 1, 3600, NOW + 10 * US)
        txn(engine, q.lease_page_txn, "orders", UNPROCESSED, None, 1, 1, NOW + 10 * US)
    finally:
        engine.dispose()
    return url


def test_source_has_every_kind_of_row(source: str) -> None:
    rows = dump(source)
    statuses = {row[3] for row in rows["events"]}
    assert statuses == {UNPROCESSED, PROCESSED, RETRY, DEAD}
    assert sum(1 for row in rows["events"] if row[8] is not None) == 4  # leases
    assert any(row[6] == 2 for row in rows["events"])  # delivered twice
    assert any(row[9] == "key-1" for row in rows["events"])


def test_copy_keeps_every_row_and_the_target_carries_on(source: str, database_url: str) -> None:
    report = copydb.copy_database(source, database_url, batch=4)  # several pages
    before, after = dump(source), dump(database_url)
    assert after == before
    assert (report.streams, report.events, report.leased) == (3, 15, 4)
    assert report.by_status == {UNPROCESSED: 9, PROCESSED: 2, RETRY: 2, DEAD: 2}
    assert report.max_seq == max(row[0] for row in before["events"])

    engine = make_engine(database_url, role="writer")
    try:
        now = NOW + 20 * US
        # Stats come from the rebuilt counts and agree with the source's.
        _, stats = txn(engine, q.stats_txn, "orders", now)
        assert (stats.unprocessed, stats.processed, stats.retry, stats.dead, stats.leased) == (6, 2, 2, 2, 3)
        # New rows sort after the copied ones (sequences moved past them).
        written = txn(engine, q.write_events_txn, "orders", ['"new"'], now)
        assert written.events[0].seq == report.max_seq + 1
        created = txn(engine, q.create_stream_txn, "fresh", now)
        assert created.sid == max(row[0] for row in before["streams"]) + 1
        # Live leases hold: only unleased events are offered; the expired
        # lease's event is offered again, redelivered.
        page = txn(engine, q.lease_page_txn, "orders", UNPROCESSED, None, 100, 60, now)
        leased_before = {row[1] for row in before["events"] if row[8] is not None and row[8] > now}
        assert leased_before.isdisjoint(e.id for e in page.events)
        assert [e.body for e in page.events][-1] == '"new"'
        # A lease copied over can still mark its event.
        held = next(row for row in before["events"] if row[8] is not None and row[8] > now)
        txn(engine, q.mark_event_txn, held[1], PROCESSED, held[7], now)
        # Keys carry over: the same key is a duplicate.
        again = txn(engine, q.write_events_txn, "audit", ['"dup"'], now, "key-1")
        assert again.duplicate and again.events[0].body == '"a1"'
    finally:
        engine.dispose()


def test_copy_refuses_a_target_that_is_not_empty(source: str, database_url: str) -> None:
    copydb.copy_database(source, database_url)
    kept = dump(database_url)
    with pytest.raises(copydb.CopyError, match="not empty"):
        copydb.copy_database(source, database_url)
    assert dump(database_url) == kept


def test_copy_refuses_a_source_at_an_older_schema(tmp_path: Path, database_url: str) -> None:
    old = f"sqlite:///{tmp_path / 'old.db'}"
    migrate.upgrade(old, "0001")
    with pytest.raises(copydb.CopyError, match="revision '0001'"):
        copydb.copy_database(old, database_url)


def test_copy_refuses_the_same_database(source: str) -> None:
    with pytest.raises(copydb.CopyError, match="same database"):
        copydb.copy_database(source, source)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "eventbus.copydb", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_command_line(source: str, database_url: str) -> None:
    done = _run(source, database_url)
    assert done.returncode == 0, done.stderr
    assert "copied 3 streams and 15 events" in done.stdout
    refused = _run(source, database_url)
    assert refused.returncode == 1
    assert "not empty" in refused.stderr and "Traceback" not in refused.stderr


@pytest.mark.postgresql
def test_a_server_moved_to_postgresql_answers_as_before(tmp_path: Path, pg_admin: PgAdmin) -> None:
    """End to end: a server on SQLite, stopped, copied with the command, a
    server on the (fresh) PostgreSQL database answers every stream alike."""
    before = ServerProcess(tmp_path / "sqlite").start()
    try:
        with LineClient(before.port) as c:
            c.call("create_stream", {"stream_name": "moving", "max_deliveries": 3})
            ids = [
                e["id"]
                for e in c.call("write_events", {"stream_name": "moving", "events": list(range(6))})["events"]
            ]
            c.call("mark_events", {"event_ids": ids[:2], "status": 1})
            c.call("mark_event", {"event_id": ids[2], "status": 2})
            leased = c.call("process_events", {"stream_name": "moving", "limit": 1, "lease_seconds": 600})[
                "events"
            ]
            c.call("create_stream", {"stream_name": "other"})
            c.call("write_event", {"stream_name": "other", "event": {"k": "v"}, "key": "once"})
            expected = {
                name: (
                    c.call("get_stream_events", {"stream_name": name})["events"],
                    c.call("get_stream_info", {"stream_name": name}),
                )
                for name in ("moving", "other")
            }
    finally:
        before.stop()
    with pg_admin.database("eventbus_moved") as target:
        done = _run(before.database, target)
        assert done.returncode == 0, done.stderr
        after = ServerProcess(tmp_path / "postgresql", database=target).start()
        try:
            with LineClient(after.port) as c:
                for name, (events_before, info_before) in expected.items():
                    assert c.call("get_stream_events", {"stream_name": name})["events"] == events_before
                    assert c.call("get_stream_info", {"stream_name": name}) == info_before
                # The lease survived the move: the event is not offered, its lease marks it.
                offered = c.call("process_events", {"stream_name": "moving", "lease_seconds": 60})["events"]
                assert leased[0]["id"] not in {e["id"] for e in offered}
                c.call(
                    "mark_event",
                    {"event_id": leased[0]["id"], "status": 1, "lease_id": leased[0]["lease_id"]},
                )
                dup = c.call("write_event", {"stream_name": "other", "event": 1, "key": "once"})
                assert dup["duplicate"] is True
                assert c.request("create_stream", {"stream_name": "moving"})["code"] == "stream_exists"
        finally:
            after.stop()
