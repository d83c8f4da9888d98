"""Storage on both backends, one test body each: SQLite and PostgreSQL.

Migrations build the model on each (a fresh database and one upgraded step by
step, with data); the work a transaction does at commit (the stream counts,
NOTIFY) happens once, at commit, and never after a rollback; and on
PostgreSQL, where several nodes write at once, concurrent transactions from
two connections neither double-count, nor hand one event to two consumers,
nor deadlock, nor wait where they need not (``lock_timeout`` turns a wait
that should not happen into a failure instead of a hang).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from eventbus.errors import BusError
from eventbus.records import DEAD, PROCESSED, RETRY, UNPROCESSED
from eventbus.storage import migrate
from eventbus.storage import queries as q
from eventbus.storage.engines import NOTIFY_CHANNEL, at_commit, make_engine
from eventbus.storage.model import metadata, stream_counts
from eventbus.storage.pg_listen import libpq_conninfo
from tests.pg import PgAdmin

US = 1_000_000
T0 = 1_800_000_000 * US


@pytest.fixture
def engine(database_url: str) -> Iterator[sa.Engine]:
    migrate.upgrade(database_url)
    e = make_engine(database_url, role="writer", pool_size=2)
    yield e
    e.dispose()


@pytest.fixture
def pg_url(pg_admin: PgAdmin) -> Iterator[str]:
    with pg_admin.database() as url:
        migrate.upgrade(url)
        yield url


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[sa.Engine]:
    e = make_engine(pg_url, role="writer", pool_size=4)
    yield e
    e.dispose()


def txn(engine: sa.Engine, fn: Callable[..., Any], *args: Any) -> Any:
    with engine.connect() as conn, conn.begin():
        return fn(conn, *args)


def counts(engine: sa.Engine, name: str) -> tuple[int, int, int, int]:
    _, stats = txn(engine, q.stats_txn, name, T0)
    return stats.unprocessed, stats.processed, stats.retry, stats.dead


def stored_counts(engine: sa.Engine) -> dict[tuple[int, int], int]:
    with engine.connect() as conn:
        rows = conn.execute(sa.select(stream_counts.c.stream_sid, stream_counts.c.status, stream_counts.c.n))
        return {(sid, status): n for sid, status, n in rows}


# -- migrations ---------------------------------------------------------------------------


def test_fresh_database_migrates_to_the_model(engine: sa.Engine) -> None:
    with engine.connect() as conn:
        assert migrate.current_revision(conn) == migrate.head_revision()
        assert set(sa.inspect(conn).get_table_names()) == set(metadata.tables) | {"alembic_version"}
        assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        indexes = {ix["name"]: ix for ix in sa.inspect(conn).get_indexes("events")}
    modelled = {ix.name for ix in metadata.tables["events"].indexes}
    assert modelled <= set(indexes)
    # The partial index keeps its predicate on both (compare_metadata does not look).
    options = indexes["ix_events_lease_expires"]["dialect_options"]
    predicate = options.get("postgresql_where", options.get("sqlite_where"))
    assert "lease_expires IS NOT NULL" in str(predicate)
    options = indexes["ix_events_stream_key"]["dialect_options"]
    predicate = options.get("postgresql_where", options.get("sqlite_where"))
    assert "idem_key IS NOT NULL" in str(predicate) and indexes["ix_events_stream_key"]["unique"]


def test_upgrade_step_by_step_keeps_data_and_backfills_counts(database_url: str) -> None:
    revisions = [r.revision for r in ScriptDirectory.from_config(migrate.alembic_config()).walk_revisions()]
    revisions.reverse()
    migrate.upgrade(database_url, revisions[0])
    old = make_engine(database_url, role="admin")
    try:
        with old.connect() as conn, conn.begin():
            conn.exec_driver_sql(
                "INSERT INTO streams (sid, id, name, created_at) VALUES (1, 'x-1', 'old', 5)"
            )
            for seq, status in enumerate([0, 0, 1, 2, 3], start=1):
                conn.exec_driver_sql(
                    "INSERT INTO events (seq, id, stream_sid, status, created_at, body, deliveries) "
                    f"VALUES ({seq}, 'e{seq}', 1, {status}, 5, '\"v{seq}\"', 0)"
                )
    finally:
        old.dispose()
    for revision in revisions[1:]:
        migrate.upgrade(database_url, revision)
    engine = make_engine(database_url, role="writer")
    try:
        with engine.connect() as conn:
            assert migrate.current_revision(conn) == migrate.head_revision()
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            bodies = conn.exec_driver_sql("SELECT body FROM events ORDER BY seq").scalars().all()
        assert bodies == ['"v1"', '"v2"', '"v3"', '"v4"', '"v5"']
        assert counts(engine, "old") == (2, 1, 1, 1)
        # Explicit keys were inserted above: new rows must still get fresh ones
        # (on PostgreSQL the sequences do not know about them by themselves).
        if engine.dialect.name == "postgresql":
            with engine.connect() as conn, conn.begin():
                conn.exec_driver_sql("SELECT setval('events_seq_seq', 5)")
                conn.exec_driver_sql("SELECT setval('streams_sid_seq', 1)")
        written = txn(engine, q.write_events_txn, "old", ['"new"'], T0)
        assert written.events[0].seq == 6
        assert counts(engine, "old") == (3, 1, 1, 1)
    finally:
        engine.dispose()


def test_nodes_starting_together_migrate_once(pg_admin: PgAdmin) -> None:
    """Three upgrades at once on an empty database: the advisory lock makes
    them take turns; all succeed and the schema is built once."""
    with pg_admin.database() as url:
        errors: list[BaseException] = []

        def up() -> None:
            try:
                migrate.upgrade(url)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=up) for _ in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert not errors
        engine = make_engine(url, role="admin")
        try:
            with engine.connect() as conn:
                assert migrate.current_revision(conn) == migrate.head_revision()
                assert compare_metadata(MigrationContext.configure(conn), metadata) == []
        finally:
            engine.dispose()


# -- work at commit ---------------------------------------------------------------------------


def test_counts_move_at_commit_and_not_after_a_rollback(engine: sa.Engine) -> None:
    txn(engine, q.create_stream_txn, "s", T0)
    ids = [e.id for e in txn(engine, q.write_events_txn, "s", ['"a"', '"b"', '"c"'], T0).events]
    with engine.connect() as conn:
        with conn.begin():
            q.mark_events_txn(conn, ids[:1], PROCESSED, None, T0)
            q.mark_events_txn(conn, ids[1:2], RETRY, None, T0)
            q.mark_events_txn(conn, ids[1:2], DEAD, None, T0)  # same transaction, moved on
        trans = conn.begin()
        q.write_events_txn(conn, "s", ['"never"'], T0)
        q.mark_events_txn(conn, ids[2:], PROCESSED, None, T0)
        trans.rollback()
    assert counts(engine, "s") == (1, 1, 0, 1)


def test_a_failing_commit_step_commits_nothing_and_leaves_the_connection_usable(engine: sa.Engine) -> None:
    txn(engine, q.create_stream_txn, "s", T0)

    def explode(conn: sa.Connection, _: object) -> None:
        conn.exec_driver_sql("SELECT * FROM no_such_table")

    with engine.connect() as conn:
        with pytest.raises(sa.exc.DBAPIError):
            with conn.begin():
                q.write_events_txn(conn, "s", ['"lost"'], T0)
                at_commit(conn, "explode", explode, list)
        with conn.begin():  # the same connection carries on
            q.write_events_txn(conn, "s", ['"kept"'], T0)
    page = txn(engine, q.read_page_txn, "s", None, None, 10)
    assert [e.body for e in page.events] == ['"kept"']
    assert counts(engine, "s") == (1, 0, 0, 0)


def test_at_commit_needs_an_engine_of_make_engine(database_url: str) -> None:
    migrate.upgrade(database_url)
    plain = sa.create_engine(database_url)
    try:
        with plain.connect() as conn, conn.begin():
            with pytest.raises(RuntimeError, match="make_engine"):
                at_commit(conn, "x", lambda c, v: None, list)
    finally:
        plain.dispose()


def test_list_streams_orders_by_code_point(pg_admin: PgAdmin) -> None:
    """As SQLite does, whatever the PostgreSQL database's collation."""
    try:
        icu = pg_admin.create(
            options="TEMPLATE template0 LOCALE_PROVIDER icu ICU_LOCALE 'en-US' LOCALE 'C.UTF-8'"
        )
    except psycopg.Error as e:
        pytest.skip(f"no ICU collation to test against: {e}")
    try:
        migrate.upgrade(icu)
        engine = make_engine(icu, role="writer")
        try:
            names = ["b", "B", "a-2", "a1", "A", "_z", "é", "Z"]
            for name in names:
                txn(engine, q.create_stream_txn, name, T0)
            assert [s.name for s in txn(engine, q.list_streams_txn)] == sorted(names)
        finally:
            engine.dispose()
    finally:
        pg_admin.drop(icu)


# -- NOTIFY -----------------------------------------------------------------------------------------


def _notifications(pg_url: str) -> tuple[psycopg.Connection, Callable[[], list[str]]]:
    uri, settings = libpq_conninfo(pg_url)
    listener = psycopg.connect(uri, autocommit=True, **settings)
    listener.execute(f'LISTEN "{NOTIFY_CHANNEL}"')

    def received(expected: int = 0) -> list[str]:
        """What arrived: once ``expected`` have (or 10 s passed), and a short
        while more to catch extras. Anything sent that should not have been
        shows up in a later call's answer too."""
        got = [n.payload for n in listener.notifies(timeout=10, stop_after=expected)] if expected else []
        return got + [n.payload for n in listener.notifies(timeout=0.2)]

    return listener, received


def test_notify_names_the_streams_with_new_offers_at_commit_only(pg_url: str, pg_engine: sa.Engine) -> None:
    listener, received = _notifications(pg_url)
    with listener:
        txn(pg_engine, q.create_stream_txn, "a", T0)
        txn(pg_engine, q.create_stream_txn, "b", T0)
        assert received() == []  # a new stream has nothing to offer
        with pg_engine.connect() as conn:
            trans = conn.begin()
            q.write_events_txn(conn, "a", ['"x"'], T0)
            trans.rollback()
        assert received() == []
        with pg_engine.connect() as conn, conn.begin():
            ids = [e.id for e in q.write_events_txn(conn, "a", ['"1"', '"2"'], T0).events]
            ids += [e.id for e in q.write_events_txn(conn, "b", ['"3"'], T0).events]
            q.write_events_txn(conn, "a", ['"4"'], T0)
        assert sorted(received(2)) == ["a", "b"]  # once per stream and transaction
        txn(pg_engine, q.mark_events_txn, ids, PROCESSED, None, T0)
        assert received() == []  # nothing new to offer
        txn(pg_engine, q.mark_events_txn, ids[:1], RETRY, None, T0)
        assert received(1) == ["a"]
        txn(pg_engine, q.lease_page_txn, "a", UNPROCESSED, None, 10, 1, T0)
        assert received() == []
        txn(pg_engine, q.sweep_leases_txn, T0 + 2 * US, 100)
        assert received(1) == ["a"]  # its lease ran out: offered again
        txn(pg_engine, q.delete_stream_txn, "b")
        assert received(1) == ["b"]


# -- several writers at once (PostgreSQL) ---------------------------------------------------------


class Background:
    """Run a transaction in another thread; its result or error afterwards."""

    def __init__(self, engine: sa.Engine, fn: Callable[..., Any], *args: Any) -> None:
        self.result: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(engine, fn, args))
        self.thread.start()

    def _run(self, engine: sa.Engine, fn: Callable[..., Any], args: tuple) -> None:
        try:
            self.result = txn(engine, fn, *args)
        except BaseException as e:  # reported by join()
            self.error = e

    def join(self) -> Any:
        self.thread.join(30)
        assert not self.thread.is_alive()
        if self.error is not None:
            raise self.error
        return self.result

    def blocked(self) -> bool:
        self.thread.join(0.5)
        return self.thread.is_alive()


def _stream_with(engine: sa.Engine, name: str, n: int, **kw: Any) -> list[str]:
    txn(engine, q.create_stream_txn, name, T0, kw.get("max_deliveries"), kw.get("retention_seconds"))
    return [e.id for e in txn(engine, q.write_events_txn, name, [f'"{i}"' for i in range(n)], T0).events]


def test_two_nodes_leasing_at_once_get_different_events_without_waiting(pg_engine: sa.Engine) -> None:
    ids = _stream_with(pg_engine, "s", 10)
    with pg_engine.connect() as first:
        with first.begin():
            mine = q.lease_page_txn(first, "s", UNPROCESSED, None, 4, 60, T0)
            other = Background(pg_engine, q.lease_page_txn, "s", UNPROCESSED, None, 4, 60, T0)
            theirs = other.join()  # SKIP LOCKED: did not wait for our commit
    assert [e.id for e in mine.events] == ids[:4]
    theirs_ids = [e.id for e in theirs.events]
    assert len(theirs_ids) == 4 and set(theirs_ids) <= set(ids[4:])
    assert theirs_ids == sorted(theirs_ids, key=ids.index)  # in write order


def test_two_nodes_sweeping_at_once_count_each_dead_letter_once(pg_engine: sa.Engine) -> None:
    _stream_with(pg_engine, "s", 50, max_deliveries=1)
    txn(pg_engine, q.lease_page_txn, "s", UNPROCESSED, None, 50, 1, T0)
    later = T0 + 5 * US
    with pg_engine.connect() as first:
        with first.begin():
            mine = q.sweep_leases_txn(first, later, 30)
            other = Background(pg_engine, q.sweep_leases_txn, later, 100)
            theirs = other.join()  # skipped our 30 rows instead of waiting
    assert (mine.count, theirs.count) == (30, 20)
    assert counts(pg_engine, "s") == (0, 0, 0, 50)
    assert sum(stored_counts(pg_engine).values()) == 50


def test_two_nodes_purging_at_once_uncount_each_event_once(pg_engine: sa.Engine) -> None:
    _stream_with(pg_engine, "s", 40, retention_seconds=1)
    later = T0 + 10 * US
    with pg_engine.connect() as first:
        with first.begin():
            mine = q.purge_expired_txn(first, later, 3600, 25)
            other = Background(pg_engine, q.purge_expired_txn, later, 3600, 100)
            theirs = other.join()
    assert (mine, theirs) == (25, 15)
    assert counts(pg_engine, "s") == (0, 0, 0, 0)
    assert set(stored_counts(pg_engine).values()) == {0}


def test_two_nodes_marking_one_event_count_it_once(pg_engine: sa.Engine) -> None:
    ids = _stream_with(pg_engine, "s", 3)
    with pg_engine.connect() as first:
        with first.begin():
            q.mark_events_txn(first, ids[:2], PROCESSED, None, T0)
            other = Background(pg_engine, q.mark_events_txn, ids[1:], PROCESSED, None, T0)
            assert other.blocked(), "the second mark must wait for the first's row locks"
        marked = other.join()
    assert marked.marked == 2
    assert counts(pg_engine, "s") == (0, 3, 0, 0)


def test_a_write_racing_a_delete_on_another_node_finds_no_stream(pg_engine: sa.Engine) -> None:
    _stream_with(pg_engine, "s", 1)
    with pg_engine.connect() as first:
        with first.begin():
            q.delete_stream_txn(first, "s")
            other = Background(pg_engine, q.write_events_txn, "s", ['"late"'], T0)
            assert other.blocked()
    with pytest.raises(BusError) as e:
        other.join()
    assert e.value.code == "stream_not_found"


def test_group_commits_crossing_streams_do_not_deadlock_on_counts(pg_engine: sa.Engine) -> None:
    """Node one commits [mark in s2, write to s1] while node two commits
    [mark in s1, write to s2]: counts touched in opposite orders, which would
    deadlock if each job updated them as it ran."""
    s1 = _stream_with(pg_engine, "s1", 2)
    s2 = _stream_with(pg_engine, "s2", 2)
    ready = threading.Barrier(2, timeout=10)

    def node(mark: list[str], write_to: str) -> Callable[[sa.Connection], None]:
        def batch(conn: sa.Connection) -> None:
            q.mark_events_txn(conn, mark, PROCESSED, None, T0)
            ready.wait()  # both have marked before either writes
            q.write_events_txn(conn, write_to, ['"new"'], T0)
            ready.wait()  # both have written before either commits

        return batch

    one = Background(pg_engine, node(s2[:1], "s1"))
    two = Background(pg_engine, node(s1[:1], "s2"))
    one.join()
    two.join()
    assert counts(pg_engine, "s1") == (2, 1, 0, 0)
    assert counts(pg_engine, "s2") == (2, 1, 0, 0)


def test_writers_to_one_stream_take_turns_so_seq_follows_commits(pg_engine: sa.Engine) -> None:
    """A reader paging with after_seq must never skip an event that commits
    after a later-numbered one: the second writer waits, then numbers after."""
    _stream_with(pg_engine, "s", 1)
    _stream_with(pg_engine, "elsewhere", 1)
    with pg_engine.connect() as first:
        with first.begin():
            mine = q.write_events_txn(first, "s", ['"first"'], T0)
            unrelated = Background(pg_engine, q.write_events_txn, "elsewhere", ['"x"'], T0)
            unrelated.join()  # another stream: no waiting
            other = Background(pg_engine, q.write_events_txn, "s", ['"second"'], T0)
            assert other.blocked(), "a second writer to the stream must wait for the first's commit"
        theirs = other.join()
    assert theirs.events[0].seq > mine.events[0].seq


def test_one_key_written_through_two_nodes_at_once_is_one_event(pg_engine: sa.Engine) -> None:
    txn(pg_engine, q.create_stream_txn, "s", T0)
    with pg_engine.connect() as first:
        with first.begin():
            mine = q.write_events_txn(first, "s", ['"one"'], T0, "k")
            other = Background(pg_engine, q.write_events_txn, "s", ['"two"'], T0, "k")
            assert other.blocked()
        theirs = other.join()
    assert theirs.duplicate and theirs.events[0].id == mine.events[0].id
    assert counts(pg_engine, "s") == (1, 0, 0, 0)
