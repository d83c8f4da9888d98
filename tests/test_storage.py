"""Storage on a real SQLite file: migrations, indexes, retention, group commit.

These call the blocking ``*_txn`` functions of eventbus/storage/queries.py
directly, each in its own transaction on an engine made the way the server
makes it, on a database migrated the way the server migrates it.
"""

from __future__ import annotations

import queue
import re
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from eventbus.errors import BusError
from eventbus.records import PROCESSED, RETRY, UNPROCESSED
from eventbus.storage import migrate
from eventbus.storage import queries as q
from eventbus.storage.engines import make_engine
from eventbus.storage.model import metadata
from eventbus.storage.writer import GroupCommitWriter, deferred_reply
from tests.hardening_support import logged_failures

US = 1_000_000
T0 = 1_800_000_000 * US  # a fixed "now", epoch microseconds


@pytest.fixture
def url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'bus.db'}"


@pytest.fixture
def engine(url: str) -> Iterator[sa.Engine]:
    migrate.upgrade(url)
    e = make_engine(url, role="writer")
    yield e
    e.dispose()


def txn(engine: sa.Engine, fn: Callable[..., Any], *args: Any) -> Any:
    """Run one ``*_txn`` function in its own transaction, as the server does."""
    with engine.connect() as conn, conn.begin():
        return fn(conn, *args)


def bodies(engine: sa.Engine, name: str) -> list[str]:
    return [e.body for e in txn(engine, q.read_page_txn, name, None, None, 100_000).events]


# -- migrations ---------------------------------------------------------------------


def test_fresh_database_migrates_to_head(url: str, engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
        tables = set(sa.inspect(conn).get_table_names())
    assert tables == set(metadata.tables) | {"alembic_version"}


def test_migrated_schema_equals_the_model(engine: sa.Engine) -> None:
    """Columns, types, nullability, keys, indexes: the migrations build
    exactly what model.py describes."""
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    assert diffs == []


def test_indexes_and_partial_index_predicate_are_as_modelled(engine: sa.Engine) -> None:
    """compare_metadata does not look at a partial index's WHERE: check the
    index definitions themselves."""
    with engine.connect() as conn:
        created = dict(
            conn.exec_driver_sql(
                "SELECT name, sql FROM sqlite_master WHERE type = 'index' AND sql IS NOT NULL"
            ).all()
        )
    modelled = {ix.name for table in metadata.tables.values() for ix in table.indexes}
    assert set(created) == modelled
    assert re.search(r"WHERE\s+lease_expires IS NOT NULL", created["ix_events_lease_expires"])
    assert re.search(r"UNIQUE INDEX.*WHERE\s+idem_key IS NOT NULL", created["ix_events_stream_key"])


def test_sqlite_settings_on_every_connection(url: str, engine: sa.Engine) -> None:
    """WAL with synchronous=FULL is what makes an acknowledged write durable."""
    reader = make_engine(url, role="reader", pool_size=2)
    try:
        for e in (engine, reader):
            with e.connect() as conn:
                pragma = conn.exec_driver_sql
                assert pragma("PRAGMA journal_mode").scalar() == "wal"
                assert pragma("PRAGMA synchronous").scalar() == 2  # FULL
                assert pragma("PRAGMA foreign_keys").scalar() == 1
                assert pragma("PRAGMA busy_timeout").scalar() > 0
                assert pragma("PRAGMA temp_store").scalar() == 2  # MEMORY: no temp files
    finally:
        reader.dispose()


# -- indexes are used -------------------------------------------------------------------


def plans(engine: sa.Engine, fn: Callable[..., Any], *args: Any) -> list[str]:
    """The query-plan lines of every statement ``fn`` runs (its transaction
    is rolled back, so the data stays as it was). Statements are seen by the
    driver itself (SQLite's trace hook, values in place), so those the write
    path sends past SQLAlchemy are seen too."""
    seen: list[str] = []

    def record(statement: str) -> None:
        if statement.lstrip().upper().startswith(("SELECT", "UPDATE", "DELETE", "INSERT")):
            seen.append(statement)

    with engine.connect() as conn:
        driver = conn.connection.driver_connection
        trans = conn.begin()
        driver.set_trace_callback(record)
        try:
            fn(conn, *args)
        finally:
            driver.set_trace_callback(None)
            trans.rollback()
    assert seen, "no statements captured"
    details = []
    with engine.connect() as conn:
        for statement in seen:
            rows = conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement).all()
            details += [f"{row[-1]}    <- {statement.split()[0]} {statement[:80]!r}" for row in rows]
    return details


def full_scans(details: list[str]) -> list[str]:
    return [d for d in details if re.match(r"SCAN (TABLE )?(events|stream_counts)\b", d)]


@pytest.fixture
def populated(engine: sa.Engine) -> dict[str, Any]:
    """Three streams of 400 events in mixed states, so a scan would show."""
    ids: dict[str, list[str]] = {}
    for k, name in enumerate(["one", "two", "three"]):
        txn(engine, q.create_stream_txn, name, T0, None, None)
        written = txn(engine, q.write_events_txn, name, [f'{{"n": {n}}}' for n in range(400)], T0 + k)
        ids[name] = [e.id for e in written.events]
        txn(engine, q.mark_events_txn, ids[name][:150], PROCESSED, None, T0)
        txn(engine, q.mark_events_txn, ids[name][150:200], RETRY, None, T0)
    txn(engine, q.lease_page_txn, "two", UNPROCESSED, None, 10, 60, T0)
    with engine.connect() as conn:
        conn.exec_driver_sql("ANALYZE")
    return ids


def test_mark_by_id_uses_the_id_index(engine: sa.Engine, populated: dict[str, Any]) -> None:
    event_id = populated["two"][300]
    details = plans(engine, q.mark_event_txn, event_id, PROCESSED, None, T0)
    assert full_scans(details) == [], "\n".join(details)
    assert any(re.match(r"SEARCH (TABLE )?events USING .*INDEX .*\(id=\?\)", d) for d in details), "\n".join(
        details
    )


def test_mark_many_by_id_uses_the_id_index(engine: sa.Engine, populated: dict[str, Any]) -> None:
    details = plans(engine, q.mark_events_txn, populated["one"][200:260], RETRY, None, T0)
    assert full_scans(details) == [], "\n".join(details)


@pytest.mark.parametrize("status", [UNPROCESSED, RETRY])
@pytest.mark.parametrize("after_seq", [None, 500])
def test_process_and_retry_read_only_the_streams_rows_of_that_status(
    engine: sa.Engine, populated: dict[str, Any], status: int, after_seq: int | None
) -> None:
    details = plans(engine, q.read_page_txn, "two", status, after_seq, 100)
    assert full_scans(details) == [], "\n".join(details)
    assert any(
        re.match(
            r"SEARCH (TABLE )?events USING INDEX ix_events_stream_status_seq \(stream_sid=\? AND status=\?", d
        )
        for d in details
    ), "\n".join(details)
    # Already in seq order: no sort, so LIMIT stops the read early.
    assert not any("TEMP B-TREE" in d for d in details), "\n".join(details)


def test_leasing_reads_only_the_streams_rows_of_that_status(
    engine: sa.Engine, populated: dict[str, Any]
) -> None:
    details = plans(engine, q.lease_page_txn, "three", UNPROCESSED, None, 50, 30, T0)
    assert full_scans(details) == [], "\n".join(details)
    assert any("ix_events_stream_status_seq" in d for d in details), "\n".join(details)
    assert not any("TEMP B-TREE" in d for d in details), "\n".join(details)


def test_a_keyed_write_finds_its_key_through_the_partial_key_index(
    engine: sa.Engine, populated: dict[str, Any]
) -> None:
    txn(engine, q.write_events_txn, "one", ['"keyed"'], T0, "k-1")
    details = plans(engine, q.write_events_txn, "one", ['"again"'], T0, "k-1")
    assert full_scans(details) == [], "\n".join(details)
    assert any("ix_events_stream_key" in d for d in details), "\n".join(details)


def test_get_stream_events_reads_only_that_stream_in_order(
    engine: sa.Engine, populated: dict[str, Any]
) -> None:
    details = plans(engine, q.read_page_txn, "one", None, 100, 100)
    assert full_scans(details) == [], "\n".join(details)
    assert not any("TEMP B-TREE" in d for d in details), "\n".join(details)


@pytest.mark.parametrize(
    "call",
    [
        ("write_events_txn", ("two", ['"x"', '"y"'], T0)),
        ("write_events_txn", ("two", ['"x"'], T0, "key-1")),
        ("stats_txn", ("two", T0)),
        ("sweep_leases_txn", (T0 + 3600 * US, 100)),
        ("purge_expired_txn", (T0 + 10 * US, 5, 100)),
        ("purge_expired_txn", (T0 + 1, 3600, 100)),
        ("find_stream_txn", ("three",)),
        ("create_stream_txn", ("four", T0)),
    ],
    ids=lambda c: c[0] if isinstance(c, tuple) else None,
)
def test_no_other_transaction_scans_the_events(
    engine: sa.Engine, populated: dict[str, Any], call: tuple[str, tuple]
) -> None:
    name, args = call
    details = plans(engine, getattr(q, name), *args)
    assert full_scans(details) == [], "\n".join(details)


# -- retention purge ------------------------------------------------------------------------


def test_purge_deletes_only_expired_events(engine: sa.Engine) -> None:
    default = 100  # seconds
    txn(engine, q.create_stream_txn, "default", T0, None, None)
    txn(engine, q.create_stream_txn, "short", T0, None, 10)
    txn(engine, q.create_stream_txn, "long", T0, None, 1000)
    now = T0 + 10_000 * US

    def write(name: str, age_s: float, body: str) -> None:
        txn(engine, q.write_events_txn, name, [f'"{body}"'], now - int(age_s * US))

    write("default", 200, "d-old")
    write("default", 100, "d-at-limit")  # exactly the retention: not yet past it
    write("default", 99.5, "d-young")
    write("short", 20, "s-old")
    write("short", 5, "s-young")
    write("long", 500, "l-older-than-default")
    write("long", 1500, "l-old")
    # State does not matter: processed and leased events expire too.
    old_ids = [e.id for e in txn(engine, q.read_page_txn, "default", None, None, 10).events]
    txn(engine, q.mark_events_txn, old_ids[:1], PROCESSED, None, now)

    assert txn(engine, q.purge_expired_txn, now, default, 100) == 3
    assert bodies(engine, "default") == ['"d-at-limit"', '"d-young"']
    assert bodies(engine, "short") == ['"s-young"']
    assert bodies(engine, "long") == ['"l-older-than-default"']
    assert txn(engine, q.purge_expired_txn, now, default, 100) == 0
    # The kept counts follow the deletes.
    for name, total in [("default", 2), ("short", 1), ("long", 1)]:
        _, stats = txn(engine, q.stats_txn, name, now)
        assert (stats.total, stats.unprocessed, stats.processed) == (total, total, 0)


def test_purge_goes_in_batches_oldest_first(engine: sa.Engine) -> None:
    txn(engine, q.create_stream_txn, "s", T0, None, None)
    for age in [70, 10, 90, 50, 30, 80, 60, 1]:
        txn(engine, q.write_events_txn, "s", [f'"{age}"'], T0 - age * US)
    assert txn(engine, q.purge_expired_txn, T0, 20, 2) == 2
    assert sorted(int(b.strip('"')) for b in bodies(engine, "s")) == [1, 10, 30, 50, 60, 70]
    assert txn(engine, q.purge_expired_txn, T0, 20, 2) == 2
    assert sorted(int(b.strip('"')) for b in bodies(engine, "s")) == [1, 10, 30, 50]
    assert txn(engine, q.purge_expired_txn, T0, 20, 2) == 2
    assert txn(engine, q.purge_expired_txn, T0, 20, 2) == 0
    assert sorted(int(b.strip('"')) for b in bodies(engine, "s")) == [1, 10]


# -- the group-commit writer ------------------------------------------------------------------


class ThreadHop:
    """A stand-in reactor: callFromThread queues the call for the test
    thread, as the real reactor runs it on the reactor thread."""

    def __init__(self) -> None:
        self.calls: queue.Queue = queue.Queue()

    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        self.calls.put((f, args))

    def run_until(self, done: Callable[[], bool], timeout: float = 30) -> None:
        while not done():
            f, args = self.calls.get(timeout=timeout)
            f(*args)


def submit(writer: GroupCommitWriter, fn: Callable[..., Any], args: tuple, committed: Any = None) -> Deferred:
    """Queue ``fn(conn, *args)`` on ``writer``; the Deferred fires after its commit."""
    d: Deferred = Deferred()
    writer.submit_then(fn, args, deferred_reply(d), committed)
    return d


def outcome(d: Any) -> list[Any]:
    box: list[Any] = []
    d.addBoth(box.append)
    return box


def _run_queued(writer: GroupCommitWriter, hop: ThreadHop, results: list[list[Any]]) -> None:
    """Start the writer on the jobs queued so far, wait for all their
    results, then stop it."""
    writer.start()
    try:
        hop.run_until(lambda: all(results))
    finally:
        stopped = outcome(writer.stop())
        hop.run_until(lambda: bool(stopped))


def _explode(conn: sa.Connection, name: str) -> None:
    """A buggy job: changes something, then fails with a non-BusError."""
    q.create_stream_txn(conn, name, T0)
    raise RuntimeError("bug")


def test_group_commit_runs_all_pending_jobs_in_one_transaction(engine: sa.Engine) -> None:
    hop = ThreadHop()
    writer = GroupCommitWriter(engine, hop)
    txn(engine, q.create_stream_txn, "g", T0, None, None)
    results = [outcome(submit(writer, q.write_events_txn, ("g", [f'"{n}"'], T0))) for n in range(50)]
    results.append(outcome(submit(writer, q.create_stream_txn, ("h", T0))))
    _run_queued(writer, hop, results)  # all 51 are queued before the thread looks
    assert (writer.batches, writer.jobs) == (1, 51)
    assert [r[0].events[0].body for r in results[:50]] == [f'"{n}"' for n in range(50)]
    assert bodies(engine, "g") == [f'"{n}"' for n in range(50)]
    assert results[50][0].name == "h"


# Bodies as compact JSON texts, some that JSON-in-JSON could garble on the way in.
AWKWARD_BODIES = [
    '"événement ✓ 事件 😀"',
    '{"quote":"\\"","backslash":"\\\\","nul":"\\u0000","newline":"\\n"}',
    "18446744073709551615",
    "-1.5e-300",
    "[null,true,false,{},[]]",
    '"\\ud83d\\ude00 \\u2028"',
]


def test_a_group_commit_stores_every_body_exactly_as_written(engine: sa.Engine) -> None:
    """One group commit of several writes (keyed and not): every body comes
    back byte for byte, under the seq, id and time it was given."""
    hop = ThreadHop()
    writer = GroupCommitWriter(engine, hop)
    txn(engine, q.create_stream_txn, "j", T0, None, None)
    results = [
        outcome(submit(writer, q.write_events_txn, ("j", AWKWARD_BODIES[:2], T0))),
        outcome(submit(writer, q.write_events_txn, ("j", [AWKWARD_BODIES[2]], T0 + 1, "k1"))),
        outcome(submit(writer, q.write_events_txn, ("j", AWKWARD_BODIES[3:], T0 + 2))),
    ]
    _run_queued(writer, hop, results)
    assert writer.batches == 1
    written = [e for r in results for e in r[0].events]
    stored = txn(engine, q.read_page_txn, "j", None, None, 100).events
    assert [(e.seq, e.id, e.body, e.created_at) for e in stored] == [
        (e.seq, e.id, e.body, e.created_at) for e in written
    ]
    assert [e.body for e in stored] == AWKWARD_BODIES
    assert [e.created_at for e in stored] == [T0, T0, T0 + 1, T0 + 2, T0 + 2, T0 + 2]
    assert [e.seq for e in stored] == list(range(stored[0].seq, stored[0].seq + 6))
    assert all(e.status == UNPROCESSED and e.deliveries == 0 for e in stored)
    again = txn(engine, q.write_events_txn, "j", ['"other"'], T0 + 3, "k1")
    assert again.duplicate and again.events[0].id == written[2].id, "the key was not stored"


def test_a_batch_of_more_rows_than_a_statement_takes_is_inserted_in_order(
    engine: sa.Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SQLite inserts a group commit's rows a chunk per statement: across
    chunks every row keeps its place, seq, id and body."""
    monkeypatch.setattr(q, "_INSERT_CHUNK", 3)
    statements: list[int] = []
    real = q._INSERT_ROWS_SQL

    class Counted(dict):
        def __getitem__(self, n: int) -> str:
            statements.append(n)
            return real[n]

    monkeypatch.setattr(q, "_INSERT_ROWS_SQL", Counted())
    txn(engine, q.create_stream_txn, "p", T0, None, None)
    sent = [f'"{n:03}{"x" * 40}"' for n in range(20)]
    written = txn(engine, q.write_events_txn, "p", sent, T0)
    stored = txn(engine, q.read_page_txn, "p", None, None, 100).events
    assert [e.body for e in stored] == sent
    assert [(e.seq, e.id) for e in stored] == [(e.seq, e.id) for e in written.events]
    assert [e.seq for e in stored] == list(range(stored[0].seq, stored[0].seq + 20))
    assert statements == [3] * 6 + [2]


def test_the_commit_hook_runs_even_when_the_caller_left(engine: sa.Engine) -> None:
    """A client gone before its write commits cancels only its Deferred: the
    hook that wakes long polls still runs, with the job's args and result."""
    hop = ThreadHop()
    writer = GroupCommitWriter(engine, hop)
    txn(engine, q.create_stream_txn, "c", T0, None, None)
    seen: list[tuple] = []
    left = submit(writer, q.write_events_txn, ("c", ['"1"'], T0), lambda args, r: seen.append((args, r)))
    left.addErrback(lambda f: f.trap(CancelledError))
    left.cancel()
    stayed = outcome(
        submit(writer, q.write_events_txn, ("c", ['"2"'], T0), lambda args, r: seen.append((args, r)))
    )
    _run_queued(writer, hop, [stayed])
    assert [(args[0], r.events[0].body) for args, r in seen] == [("c", '"1"'), ("c", '"2"')]
    assert bodies(engine, "c") == ['"1"', '"2"']


def test_a_reply_that_raises_costs_no_other_job_its_answer(engine: sa.Engine) -> None:
    hop = ThreadHop()
    writer = GroupCommitWriter(engine, hop)
    txn(engine, q.create_stream_txn, "r", T0, None, None)
    got: list[Any] = []

    def broken(outcome: Any) -> None:
        raise RuntimeError("injected: reply raised")

    with logged_failures() as failures:
        writer.submit_then(q.write_events_txn, ("r", ['"1"'], T0), broken)
        writer.submit_then(q.write_events_txn, ("r", ['"2"'], T0), got.append)
        writer.submit_then(q.write_events_txn, ("missing", ['"3"'], T0), got.append)
        _run_queued(writer, hop, [got])
        hop.run_until(lambda: len(got) == 2)
    assert got[0].events[0].body == '"2"'
    assert isinstance(got[1], BusError) and got[1].code == "stream_not_found"
    assert bodies(engine, "r") == ['"1"', '"2"']  # committed, whatever its reply did
    assert ["injected: reply raised" in f["log_failure"].getTraceback() for f in failures] == [True]


def test_the_writer_renders_each_committed_result(engine: sa.Engine) -> None:
    """A job's ``render`` runs in the writer thread, after the commit, and
    its value is what the reply and the commit hook get; refusals are not
    rendered; a render that fails is answered ``unavailable`` as stored
    (the write was committed), logged, and costs no other job its answer."""
    hop = ThreadHop()
    writer = GroupCommitWriter(engine, hop)
    txn(engine, q.create_stream_txn, "w", T0, None, None)
    threads: list[str] = []
    hooked: list[Any] = []
    got: list[Any] = []

    def render(written: Any) -> tuple[str, int]:
        threads.append(threading.current_thread().name)
        return ("rendered", written.events[0].seq)

    def broken(written: Any) -> Any:
        raise RuntimeError("injected: render raised")

    def hook(args: tuple, result: Any) -> None:
        hooked.append(result)

    with logged_failures() as failures:
        writer.submit_then(q.write_events_txn, ("w", ['"1"'], T0), got.append, hook, render)
        writer.submit_then(q.write_events_txn, ("w", ['"2"'], T0), got.append, hook, broken)
        writer.submit_then(q.write_events_txn, ("missing", ['"3"'], T0), got.append, hook, render)
        _run_queued(writer, hop, [got])
        hop.run_until(lambda: len(got) == 3)
    seq = got[0][1]
    assert got[0] == ("rendered", seq) and hooked == [("rendered", seq)]
    assert threads == ["eventbus-writer"]
    assert isinstance(got[1], BusError) and got[1].code == "unavailable" and "stored" in got[1].reason
    assert isinstance(got[2], BusError) and got[2].code == "stream_not_found"
    assert bodies(engine, "w") == ['"1"', '"2"']
    assert ["injected: render raised" in f["log_failure"].getTraceback() for f in failures] == [True]


def test_one_refused_job_does_not_fail_its_batch(engine: sa.Engine) -> None:
    hop = ThreadHop()
    writer = GroupCommitWriter(engine, hop)
    jobs = [
        (q.create_stream_txn, ("a", T0)),
        (q.create_stream_txn, ("a", T0)),  # stream_exists
        (q.write_events_txn, ("a", ['"1"'], T0)),
        (q.write_events_txn, ("missing", ['"2"'], T0)),  # stream_not_found
        (q.mark_event_txn, ("no-such-id", 1, None, T0)),  # event_not_found
        (q.create_stream_txn, ("b", T0)),
        (q.write_events_txn, ("b", ['"3"'], T0)),
    ]
    results = [outcome(submit(writer, fn, args)) for fn, args in jobs]
    _run_queued(writer, hop, results)
    assert writer.batches == 1
    codes = [r[0].value.code if isinstance(r[0], Failure) else "ok" for r in results]
    assert codes == ["ok", "stream_exists", "ok", "stream_not_found", "event_not_found", "ok", "ok"]
    assert bodies(engine, "a") == ['"1"']
    assert bodies(engine, "b") == ['"3"']


def test_a_failing_job_is_charged_alone_and_its_changes_undone(engine: sa.Engine) -> None:
    """A job that fails unexpectedly rolls back its batch; the others are run
    again alone and commit once each; the failing one changes nothing."""
    hop = ThreadHop()
    writer = GroupCommitWriter(engine, hop)
    jobs = [
        (q.create_stream_txn, ("a", T0)),
        (q.write_events_txn, ("a", ['"1"', '"2"'], T0)),
        (_explode, ("doomed",)),
        (q.create_stream_txn, ("a", T0)),  # still stream_exists
        (q.write_events_txn, ("a", ['"3"'], T0)),
    ]
    results = [outcome(submit(writer, fn, args)) for fn, args in jobs]
    _run_queued(writer, hop, results)
    assert not isinstance(results[0][0], Failure)
    assert not isinstance(results[1][0], Failure)
    failed = results[2][0]
    assert isinstance(failed, Failure) and failed.check(BusError)
    assert failed.value.code == "unavailable"
    assert results[3][0].value.code == "stream_exists"
    assert not isinstance(results[4][0], Failure)
    assert bodies(engine, "a") == ['"1"', '"2"', '"3"'], "a job was committed twice or lost"
    with pytest.raises(BusError) as e:
        txn(engine, q.find_stream_txn, "doomed")
    assert e.value.code == "stream_not_found"


def test_writer_stop_runs_what_is_queued(engine: sa.Engine) -> None:
    hop = ThreadHop()
    writer = GroupCommitWriter(engine, hop)
    txn(engine, q.create_stream_txn, "s", T0, None, None)
    results = [outcome(submit(writer, q.write_events_txn, ("s", [f'"{n}"'], T0))) for n in range(10)]
    stopped = outcome(writer.stop())
    writer.start()
    hop.run_until(lambda: bool(stopped) and all(results))
    assert bodies(engine, "s") == [f'"{n}"' for n in range(10)]
    with pytest.raises(BusError) as e:
        submit(writer, q.write_events_txn, ("s", ['"late"'], T0))
    assert e.value.code == "unavailable"
