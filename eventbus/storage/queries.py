"""The blocking transactions of the bus: each ``*_txn`` runs on a connection
inside a transaction that its caller (the writer or a reader) opened.

They take and return plain values (:mod:`eventbus.records`). Writes raise
:class:`BusError` only before changing anything (see the writer's contract).
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import orjson
import sqlalchemy as sa
from sqlalchemy.dialects import sqlite
from sqlalchemy.exc import IntegrityError

from eventbus import errors
from eventbus.ids import random_token, uuid7s
from eventbus.records import (
    DEAD,
    PROCESSED,
    RETRY,
    UNPROCESSED,
    Event,
    Marked,
    Page,
    Stats,
    Stream,
    Written,
)
from eventbus.storage.engines import NOTIFY_CHANNEL, at_commit
from eventbus.storage.model import events, stream_counts, streams

_STREAM_COLS = (
    streams.c.sid,
    streams.c.id,
    streams.c.name,
    streams.c.created_at,
    streams.c.max_deliveries,
    streams.c.retention_seconds,
)
_EVENT_COLS = (
    events.c.seq,
    events.c.id,
    events.c.status,
    events.c.created_at,
    events.c.body,
    events.c.deliveries,
    events.c.lease_id,
    events.c.lease_expires,
)
_SELECT_STREAM = sa.select(*_STREAM_COLS).where(streams.c.name == sa.bindparam("name"))
_INSERT_EVENTS = sa.insert(events).returning(events.c.seq, sort_by_parameter_order=True)
# SQLite's fast path (_insert_events): a group commit's rows in multi-row
# INSERT ... VALUES statements of up to _INSERT_CHUNK rows each, every value
# bound as a parameter, through the driver's own cursor; the statement for
# each row count is prepared once and kept in the driver's statement cache.
# Reading all rows from one JSON array with json_each instead (one statement
# for the whole commit) took twice as long per row at 512-800 rows: SQLite
# 3.40 parses each row's array again for each value read from it. (That one
# statement had been the better choice when the writer was a thread, which
# waited for the reactor thread's GIL after every statement.) The rows' other
# columns take their values for a new event: status UNPROCESSED, no deliveries.
_INSERT_CHUNK = 64
_INSERT_ROW_VALUES = f"(?, ?, ?, {UNPROCESSED}, ?, ?, 0, ?)"
_INSERT_ROW_PARAMS = 6  # seq, id, stream_sid, created_at, body, idem_key
_INSERT_ROWS_SQL = {
    n: "INSERT INTO events (seq, id, stream_sid, status, created_at, body, deliveries, idem_key) VALUES "
    + ", ".join([_INSERT_ROW_VALUES] * n)
    for n in range(1, _INSERT_CHUNK + 1)
}
# The highest seq ever handed out (events is AUTOINCREMENT: never reused).
_LAST_SEQ_SQL = "SELECT seq FROM sqlite_sequence WHERE name = 'events'"
_STREAM_BY_NAME_SQL = str(_SELECT_STREAM.compile(dialect=sqlite.dialect()))
_US = 1_000_000
_STATUSES = (UNPROCESSED, PROCESSED, RETRY, DEAD)
_ADD_COUNT = (
    sa.update(stream_counts)
    .where(
        stream_counts.c.stream_sid == sa.bindparam("b_sid"),
        stream_counts.c.status == sa.bindparam("b_status"),
    )
    .values(n=stream_counts.c.n + sa.bindparam("b_delta"))
)

_ADD_COUNT_SQLITE = _ADD_COUNT.compile(dialect=sqlite.dialect())
assert tuple(_ADD_COUNT_SQLITE.positiontup or ()) == ("b_delta", "b_sid", "b_status"), "parameter order"
_ADD_COUNT_SQL = str(_ADD_COUNT_SQLITE)


def _count(conn: sa.Connection, deltas: dict[tuple[int, int], int]) -> None:
    """Change the per-stream status counts by {(sid, status): delta}: added
    up over the whole transaction and applied just before it commits."""
    pending = at_commit(conn, "counts", _apply_counts, dict)
    for key, delta in deltas.items():
        pending[key] = pending.get(key, 0) + delta


def _apply_counts(conn: sa.Connection, deltas: dict[tuple[int, int], int]) -> None:
    # Last in the transaction and sorted: concurrent transactions (other
    # nodes on PostgreSQL) lock counter rows in one order, whatever jobs a
    # group commit holds, and so cannot deadlock on them.
    changes = [(sid, status, delta) for (sid, status), delta in sorted(deltas.items()) if delta]
    if not changes:
        return
    if conn.dialect.name == "sqlite":
        # Every group commit runs this: the statement compiled once.
        _driver(conn).executemany(_ADD_COUNT_SQL, [(delta, sid, status) for sid, status, delta in changes])
        return
    conn.execute(
        _ADD_COUNT, [{"b_sid": sid, "b_status": status, "b_delta": delta} for sid, status, delta in changes]
    )


_NOTIFY = sa.text(f"SELECT pg_notify('{NOTIFY_CHANNEL}', n) FROM unnest(CAST(:names AS text[])) AS n")


def _changed(conn: sa.Connection, names: Any) -> None:
    """Streams with events to offer again: on PostgreSQL, NOTIFY every node
    (delivered at commit) so their long polls wake; SQLite has one node."""
    if conn.dialect.name == "postgresql" and names:
        at_commit(conn, "notify", _notify, set).update(names)


def _notify(conn: sa.Connection, names: set[str]) -> None:
    conn.execute(_NOTIFY, {"names": sorted(names)})


def _driver(conn: sa.Connection) -> Any:
    """A cursor of the driver itself, inside ``conn``'s transaction: for the
    few statements every SQLite group commit runs, without SQLAlchemy's work
    per statement (tens of microseconds each). Its errors reach the writer
    as the driver raises them (see writer._environmental)."""
    return conn.connection.driver_connection.cursor()


def _json_array(values: Sequence[Any]) -> str:
    """``values`` as one JSON array, the parameter ``json_each(?)`` reads: a
    statement for a whole list on SQLite. As text: SQLite 3.45 and later
    would read a BLOB as JSONB."""
    return orjson.dumps(values).decode()


def _pg(conn: sa.Connection) -> bool:
    return conn.dialect.name == "postgresql"


def _moves(rows: Sequence[Any], to_status: int) -> dict[tuple[int, int], int]:
    """Count deltas for rows (with .stream_sid and .status) moving to ``to_status``."""
    deltas: dict[tuple[int, int], int] = {}
    for row in rows:
        if row.status != to_status:
            deltas[(row.stream_sid, row.status)] = deltas.get((row.stream_sid, row.status), 0) - 1
            deltas[(row.stream_sid, to_status)] = deltas.get((row.stream_sid, to_status), 0) + 1
    return deltas


def _event(row: Sequence[Any], stream_id: str) -> Event:
    seq, eid, status, created_at, body, deliveries, lease_id, lease_expires = row
    return Event(seq, eid, stream_id, status, created_at, body, deliveries, lease_id, lease_expires)


# -- streams -------------------------------------------------------------


def find_stream_txn(conn: sa.Connection, name: str) -> Stream:
    row = conn.execute(_SELECT_STREAM, {"name": name}).first()
    if row is None:
        raise errors.stream_not_found(name)
    return Stream(*row)


def list_streams_txn(conn: sa.Connection) -> list[Stream]:
    # PostgreSQL sorts by the database's collation unless told: "C" orders
    # by code point, as SQLite does.
    name = streams.c.name.collate("C") if _pg(conn) else streams.c.name
    rows = conn.execute(sa.select(*_STREAM_COLS).order_by(name)).all()
    return [Stream(*row) for row in rows]


def create_stream_txn(
    conn: sa.Connection,
    name: str,
    now: int,
    max_deliveries: int | None = None,
    retention_seconds: int | None = None,
) -> Stream:
    if conn.execute(_SELECT_STREAM, {"name": name}).first() is not None:
        raise errors.stream_exists(name)
    stream_id = random_token()
    try:
        # A savepoint: on PostgreSQL another node may win the race between
        # our check and our insert, and its unique violation must not abort
        # the other jobs of this group commit.
        with conn.begin_nested():
            sid = conn.execute(
                sa.insert(streams).returning(streams.c.sid),
                {
                    "id": stream_id,
                    "name": name,
                    "created_at": now,
                    "max_deliveries": max_deliveries,
                    "retention_seconds": retention_seconds,
                },
            ).scalar_one()
            conn.execute(
                sa.insert(stream_counts),
                [{"stream_sid": sid, "status": status, "n": 0} for status in _STATUSES],
            )
    except IntegrityError:
        raise errors.stream_exists(name) from None
    return Stream(sid, stream_id, name, now, max_deliveries, retention_seconds)


def delete_stream_txn(conn: sa.Connection, name: str) -> None:
    """Delete a stream; its events go with it (ON DELETE CASCADE)."""
    result = conn.execute(sa.delete(streams).where(streams.c.name == name))
    if result.rowcount == 0:
        raise errors.stream_not_found(name)
    _changed(conn, [name])  # long polls on it wake and find it gone


# -- writing ---------------------------------------------------------------


def write_events_txn(
    conn: sa.Connection, name: str, bodies: list[str], now: int, key: str | None = None
) -> Written:
    """Append ``bodies`` (compact JSON texts) to the stream ``name``."""
    result = _write_events_batch(conn, [(name, bodies, now, key)])[0]
    if isinstance(result, errors.BusError):
        raise result
    return result


def _write_events_batch(conn: sa.Connection, jobs: list[tuple]) -> list[Written | errors.BusError]:
    """Many writers' appends in one statement: the group commit's fast path.

    ``jobs`` are write_events_txn's argument tuples, so ``key`` may be left out.
    It runs for every write a server takes, so it stays flat: one lookup per
    stream, one batch of ids, a few multi-row inserts, one tuple per event.
    """
    names = {job[0] for job in jobs}
    if conn.dialect.name == "sqlite":
        # The only writer: a plain lookup, its statement compiled once.
        cursor = _driver(conn)
        found = [row for name in names for row in cursor.execute(_STREAM_BY_NAME_SQL, (name,)).fetchall()]
    else:
        # FOR NO KEY UPDATE (PostgreSQL; in sid order, so writers never deadlock on it): the
        # nodes' writers to a stream take turns, so within a stream seq order is
        # commit order, as with SQLite's single writer, and a reader paging with
        # after_seq never skips an event committed late; a stream deleted by
        # another node meanwhile is not found here rather than half-way.
        query = sa.select(*_STREAM_COLS).where(streams.c.name.in_(names))
        if _pg(conn):
            query = query.order_by(streams.c.sid).with_for_update(key_share=True)
        found = conn.execute(query).all()
    by_name = {stream.name: stream for stream in (Stream(*row) for row in found)}
    results: list[Any] = [None] * len(jobs)
    accepted: list[tuple[int, Stream, int, list[str], str | None]] = []
    nows: list[int] = []  # one per event to insert
    first_with_key: dict[tuple[int, str], int] = {}
    for i, job in enumerate(jobs):
        name, bodies, now = job[0], job[1], job[2]
        key = job[3] if len(job) > 3 else None
        stream = by_name.get(name)
        if stream is None:
            results[i] = errors.stream_not_found(name)
            continue
        if key is not None:
            earlier = first_with_key.get((stream.sid, key))
            if earlier is not None:
                results[i] = earlier  # resolved once the first one is written
                continue
            existing = _live_keyed_event(conn, stream, key, now)
            if existing is not None:
                results[i] = Written([existing], True)
                continue
            first_with_key[(stream.sid, key)] = i
        accepted.append((i, stream, now, bodies, key))
        nows.extend([now] * len(bodies))
    if accepted:
        ids = uuid7s(nows)
        seqs = _insert_events(conn, accepted, ids)
        added: dict[int, int] = {}
        k = 0
        for i, stream, now, bodies, _key in accepted:
            added[stream.sid] = added.get(stream.sid, 0) + len(bodies)
            stream_id = stream.id
            made = []
            for body in bodies:
                made.append(_new(Event, (seqs[k], ids[k], stream_id, UNPROCESSED, now, body, 0, None, None)))
                k += 1
            results[i] = _new(Written, (made, False))
        _count(conn, {(sid, UNPROCESSED): n for sid, n in added.items()})
        _changed(conn, {stream.name for _, stream, _, _, _ in accepted})
    for i, result in enumerate(results):
        if isinstance(result, int):
            results[i] = Written(results[result].events, True)
    return results


write_events_txn.batched = _write_events_batch  # type: ignore[attr-defined]

# A record (Event, Written) from a tuple of its fields, without NamedTuple's
# keyword-taking constructor: thousands are made per commit.
_new = tuple.__new__


def _insert_events(
    conn: sa.Connection, accepted: list[tuple[int, Stream, int, list[str], str | None]], ids: list[str]
) -> Sequence[int]:
    """Insert the bodies of ``accepted`` (job index, stream, now, bodies, key)
    with ``ids``, one per body; their seqs, in order.

    SQLite: the writer holds the write lock (BEGIN IMMEDIATE), so it
    allocates seq itself, from the highest ever handed out, as SQLite's
    AUTOINCREMENT would, and inserts the rows a chunk per statement (see
    ``_INSERT_ROWS_SQL``) through the driver's own cursor (see
    :func:`_driver`): no RETURNING, no SQLAlchemy work per row.
    Other databases: the generic INSERT ... RETURNING, in parameter order.
    """
    next_id = iter(ids).__next__
    if conn.dialect.name == "sqlite":
        cursor = _driver(conn)
        last = cursor.execute(_LAST_SEQ_SQL).fetchone()
        first = (last[0] if last else 0) + 1
        values: list[Any] = []
        seq = first
        for _, stream, now, bodies, key in accepted:
            sid = stream.sid
            for body in bodies:
                values += (seq, next_id(), sid, now, body, key)
                seq += 1
        _insert_rows(cursor, values)
        return range(first, seq)
    rows = [
        (next_id(), stream.sid, now, body, key) for _, stream, now, bodies, key in accepted for body in bodies
    ]
    params = [
        {
            "id": eid,
            "stream_sid": sid,
            "status": UNPROCESSED,
            "created_at": now,
            "body": body,
            "deliveries": 0,
            "idem_key": key,
        }
        for eid, sid, now, body, key in rows
    ]
    return conn.execute(_INSERT_EVENTS, params).scalars().all()


def _insert_rows(cursor: Any, values: list[Any]) -> None:
    """Insert rows given as one flat list of their ``_INSERT_ROW_PARAMS``
    values each, ``_INSERT_CHUNK`` rows per statement."""
    step = _INSERT_CHUNK * _INSERT_ROW_PARAMS
    for i in range(0, len(values), step):
        chunk = values[i : i + step]
        cursor.execute(_INSERT_ROWS_SQL[len(chunk) // _INSERT_ROW_PARAMS], chunk)


def _live_keyed_event(conn: sa.Connection, stream: Stream, key: str, now: int) -> Event | None:
    """The event written earlier with ``key``, until retention purges it."""
    row = conn.execute(
        sa.select(*_EVENT_COLS).where(events.c.stream_sid == stream.sid, events.c.idem_key == key)
    ).first()
    if row is None:
        return None
    return _event(row, stream.id)


# -- reading ---------------------------------------------------------------


def read_page_txn(
    conn: sa.Connection, name: str, status: int | None, after_seq: int | None, limit: int
) -> Page:
    """Up to ``limit`` events of a stream (of one status, if given), in order."""
    stream = find_stream_txn(conn, name)
    query = sa.select(*_EVENT_COLS).where(events.c.stream_sid == stream.sid)
    if status is not None:
        query = query.where(events.c.status == status)
    if after_seq is not None:
        query = query.where(events.c.seq > after_seq)
    rows = conn.execute(query.order_by(events.c.seq).limit(limit + 1)).all()
    return _page(stream, rows, limit)


def _page(stream: Stream, rows: Sequence[Sequence[Any]], limit: int) -> Page:
    more = len(rows) > limit
    chosen = [_event(row, stream.id) for row in rows[:limit]]
    return Page(stream, chosen, chosen[-1].seq if more else None)


def stats_txn(conn: sa.Connection, name: str, now: int) -> tuple[Stream, Stats]:
    """Counts by status from the kept counters; leases from their own index."""
    stream = find_stream_txn(conn, name)
    counts = dict(
        conn.execute(
            sa.select(stream_counts.c.status, stream_counts.c.n).where(
                stream_counts.c.stream_sid == stream.sid
            )
        ).all()
    )
    leased = conn.execute(
        sa.select(sa.func.count()).where(
            events.c.lease_expires > now,
            events.c.stream_sid == stream.sid,
        )
    ).scalar_one()
    return stream, Stats(
        unprocessed=counts.get(UNPROCESSED, 0),
        processed=counts.get(PROCESSED, 0),
        retry=counts.get(RETRY, 0),
        dead=counts.get(DEAD, 0),
        leased=leased,
        total=sum(counts.values()),
    )


# -- leasing and marking -----------------------------------------------------


# What a lease reads of each candidate; _LeaseRow names the driver's plain
# rows (SQLite) as SQLAlchemy names its own.
_LEASE_COLS = (*_EVENT_COLS, events.c.stream_sid)
_LeaseRow = namedtuple("_LeaseRow", [c.name for c in _LEASE_COLS])


def _positional(statement: sa.Executable) -> tuple[str, tuple[str, ...], dict[str, Any]]:
    """``statement`` compiled for SQLite: its text, the names of its
    parameters in order, and the values the statement itself fixes."""
    compiled = statement.compile(dialect=sqlite.dialect())
    return str(compiled), tuple(compiled.positiontup or ()), dict(compiled.params)


def _lease_candidates(after: bool) -> sa.Select:
    query = sa.select(*_LEASE_COLS).where(
        events.c.stream_sid == sa.bindparam("sid"),
        events.c.status == sa.bindparam("status"),
        sa.or_(events.c.lease_expires.is_(None), events.c.lease_expires <= sa.bindparam("now")),
    )
    if after:
        query = query.where(events.c.seq > sa.bindparam("after"))
    return query.order_by(events.c.seq).limit(sa.bindparam("n"))


# Built once (a lease is every consumer's hot path), by whether the caller
# pages with after_seq; SQLite runs them compiled, through the driver.
_LEASE_CANDIDATES = {after: _lease_candidates(after) for after in (False, True)}
_LEASE_CANDIDATES_PG = {after: q.with_for_update(skip_locked=True) for after, q in _LEASE_CANDIDATES.items()}
_LEASE_CANDIDATES_SQLITE = {after: _positional(q) for after, q in _LEASE_CANDIDATES.items()}
_LEASE = (
    sa.update(events)
    .where(events.c.seq.in_(sa.bindparam("seqs", expanding=True)))
    .values(
        lease_id=sa.bindparam("token"),
        lease_expires=sa.bindparam("expires"),
        deliveries=events.c.deliveries + 1,
    )
)
# SQLite: the page's seqs as one JSON array, one statement whatever the page's size.
_LEASE_SQLITE = (
    "UPDATE events SET lease_id = ?, lease_expires = ?, deliveries = deliveries + 1"
    " WHERE seq IN (SELECT value FROM json_each(?))"
)


def lease_page_txn(
    conn: sa.Connection,
    name: str,
    status: int,
    after_seq: int | None,
    limit: int,
    lease_seconds: int,
    now: int,
) -> Page:
    """Hand up to ``limit`` unleased events of ``status`` to one caller."""
    stream = find_stream_txn(conn, name)
    values = {"sid": stream.sid, "status": status, "now": now, "after": after_seq, "n": limit + 1}
    after = after_seq is not None
    if conn.dialect.name == "sqlite":
        sql, order, fixed = _LEASE_CANDIDATES_SQLITE[after]
        found = _driver(conn).execute(sql, [values.get(k, fixed.get(k)) for k in order]).fetchall()
        rows = [_new(_LeaseRow, row) for row in found]
    else:
        statement = _LEASE_CANDIDATES_PG[after] if _pg(conn) else _LEASE_CANDIDATES[after]
        rows = conn.execute(statement, values).all()
    more = len(rows) > limit
    rows = rows[:limit]
    # Where the next page starts: after this one's last row, even when that
    # row was dead-lettered below rather than handed out.
    next_after_seq = rows[-1].seq if more else None
    if stream.max_deliveries is not None:
        spent = [r for r in rows if r.deliveries >= stream.max_deliveries]
        if spent:
            _dead_letter(conn, spent)
            rows = [r for r in rows if r.deliveries < stream.max_deliveries]
    expires = now + lease_seconds * _US
    # One token for this delivery of the whole page, so mark_events can
    # settle the page under it; a later lease of any of them gets a new one.
    token = random_token()
    if rows:
        seqs = [row.seq for row in rows]
        if conn.dialect.name == "sqlite":
            _driver(conn).execute(_LEASE_SQLITE, (token, expires, _json_array(seqs)))
        else:
            conn.execute(_LEASE, {"seqs": seqs, "token": token, "expires": expires})
    stream_id = stream.id
    leased = [
        _new(
            Event,
            (
                row.seq,
                row.id,
                stream_id,
                row.status,
                row.created_at,
                row.body,
                row.deliveries + 1,
                token,
                expires,
            ),
        )
        for row in rows
    ]
    return Page(stream, leased, next_after_seq)


def _dead_letter(conn: sa.Connection, rows: Sequence[Any]) -> None:
    """Give ``rows`` (with seq, stream_sid, status) the dead status."""
    conn.execute(
        sa.update(events)
        .where(events.c.seq.in_([r.seq for r in rows]))
        .values(status=DEAD, lease_id=None, lease_expires=None)
    )
    _count(conn, _moves(rows, DEAD))


class _MarkRow(NamedTuple):
    id: str
    stream_sid: int
    status: int
    lease_id: str | None
    lease_expires: int | None
    name: str


# Built once: marking is every consumer's hot path. SQLite gets the ids as
# one JSON array (one statement whatever their number), through the driver.
_MARK_ROWS = (
    sa.select(*(getattr(events.c, f) for f in _MarkRow._fields[:-1]), streams.c.name)
    .join(streams, streams.c.sid == events.c.stream_sid)
    .where(events.c.id.in_(sa.bindparam("ids", expanding=True)))
)
_MARK_ROWS_PG = _MARK_ROWS.order_by(events.c.seq).with_for_update(of=events)
_MARK_ROWS_SQLITE = (
    f"SELECT {', '.join('events.' + f for f in _MarkRow._fields[:-1])}, streams.name"
    " FROM events JOIN streams ON streams.sid = events.stream_sid"
    " WHERE events.id IN (SELECT value FROM json_each(?))"
)
_MARK = (
    sa.update(events)
    .where(events.c.id.in_(sa.bindparam("ids", expanding=True)))
    .values(status=sa.bindparam("new_status"), lease_id=None, lease_expires=None)
)
_MARK_REDRIVE = _MARK.values(deliveries=sa.case((events.c.status == DEAD, 0), else_=events.c.deliveries))
# (In an UPDATE every expression reads the row as it was: CASE sees the old status.)
_MARK_SQLITE = (
    "UPDATE events SET status = ?, lease_id = NULL, lease_expires = NULL"
    " WHERE id IN (SELECT value FROM json_each(?))"
)
_MARK_REDRIVE_SQLITE = _MARK_SQLITE.replace(
    "SET status = ?", f"SET deliveries = CASE WHEN status = {DEAD} THEN 0 ELSE deliveries END, status = ?"
)


def mark_events_txn(
    conn: sa.Connection,
    ids: list[str],
    status: int,
    lease_id: str | None,
    now: int,
    visible: Callable[[str], bool] | None = None,
) -> Marked:
    """Set ``status`` on events by id; with ``lease_id``, only under that lease.

    With ``visible`` (a client limited to some streams, PROTOCOL.md 7.8),
    events of the streams it rejects are left alone and reported not found.
    """
    # No id holds U+0000, and PostgreSQL refuses it in a parameter.
    wanted = [i for i in ids if "\x00" not in i]
    on_sqlite = conn.dialect.name == "sqlite"
    if on_sqlite:
        fetched = _driver(conn).execute(_MARK_ROWS_SQLITE, (_json_array(wanted),)).fetchall()
        rows = [_new(_MarkRow, row) for row in fetched]
    else:
        # Another node may mark the same events now: lock them (in one
        # order) so the statuses read here, and the counts moved from them,
        # are the current ones.
        statement = _MARK_ROWS_PG if _pg(conn) else _MARK_ROWS
        rows = conn.execute(statement, {"ids": wanted}).all()
    if visible is not None:
        rows = [row for row in rows if visible(row.name)]
    found = {row.id: row for row in rows}
    not_found = [i for i in dict.fromkeys(ids) if i not in found]
    lost: list[str] = []
    if lease_id is not None:
        lost = [
            row.id
            for row in rows
            if row.lease_id != lease_id or row.lease_expires is None or row.lease_expires <= now
        ]
    lost_set = set(lost)
    chosen = [row for row in rows if row.id not in lost_set]
    if chosen:
        # Redrive (back to unprocessed or retry): a dead event starts its deliveries again.
        redrive = status in (UNPROCESSED, RETRY)
        chosen_ids = [r.id for r in chosen]
        if on_sqlite:
            sql = _MARK_REDRIVE_SQLITE if redrive else _MARK_SQLITE
            _driver(conn).execute(sql, (status, _json_array(chosen_ids)))
        else:
            conn.execute(_MARK_REDRIVE if redrive else _MARK, {"ids": chosen_ids, "new_status": status})
        _count(conn, _moves(chosen, status))
    names = sorted({row.name for row in chosen})
    if status in (UNPROCESSED, RETRY):
        _changed(conn, names)
    return Marked(len(chosen), not_found, lost, names)


def mark_event_txn(
    conn: sa.Connection,
    event_id: str,
    status: int,
    lease_id: str | None,
    now: int,
    visible: Callable[[str], bool] | None = None,
) -> Marked:
    """Mark one event: ``event_not_found`` and ``lease_lost`` are errors here."""
    marked = mark_events_txn(conn, [event_id], status, lease_id, now, visible)
    if marked.not_found:
        raise errors.event_not_found(event_id)
    if marked.lease_lost:
        raise errors.lease_lost(event_id)
    return marked


# -- housekeeping --------------------------------------------------------------


class Swept(NamedTuple):
    count: int
    streams: list[str]  # names of streams with events offered again


def sweep_leases_txn(conn: sa.Connection, now: int, batch: int) -> Swept:
    """End up to ``batch`` expired leases; dead-letter the events they used up."""
    rows = conn.execute(
        sa.select(
            events.c.seq,
            events.c.stream_sid,
            events.c.status,
            events.c.deliveries,
            streams.c.max_deliveries,
            streams.c.name,
        )
        .join(streams, streams.c.sid == events.c.stream_sid)
        .where(events.c.lease_expires <= now)
        .limit(batch)
        # Every node sweeps: each takes the rows no other is sweeping now.
        .with_for_update(of=events, skip_locked=True)
    ).all()
    dead = [r for r in rows if r.max_deliveries is not None and r.deliveries >= r.max_deliveries]
    live = [r for r in rows if r.max_deliveries is None or r.deliveries < r.max_deliveries]
    if dead:
        _dead_letter(conn, dead)
    if live:
        conn.execute(
            sa.update(events)
            .where(events.c.seq.in_([r.seq for r in live]))
            .values(lease_id=None, lease_expires=None)
        )
    names = sorted({r.name for r in live})
    _changed(conn, names)
    return Swept(len(rows), names)


def purge_expired_txn(conn: sa.Connection, now: int, default_retention_s: int, batch: int) -> int:
    """Delete up to ``batch`` events older than their stream's retention."""
    shortest = conn.execute(sa.select(sa.func.min(streams.c.retention_seconds))).scalar()
    if shortest is None or shortest > default_retention_s:
        shortest = default_retention_s
    retention = sa.func.coalesce(streams.c.retention_seconds, default_retention_s) * _US
    doomed = conn.execute(
        sa.select(events.c.seq, events.c.stream_sid, events.c.status)
        .join(streams, streams.c.sid == events.c.stream_sid)
        # The first bound uses the created_at index, so a round that finds
        # nothing to delete reads nothing; the second is each stream's own.
        .where(events.c.created_at < now - shortest * _US)
        .where(events.c.created_at < now - retention)
        .order_by(events.c.created_at)
        .limit(batch)
        # Every node purges: each deletes (and uncounts) rows no other has.
        .with_for_update(of=events, skip_locked=True)
    ).all()
    if not doomed:
        return 0
    conn.execute(sa.delete(events).where(events.c.seq.in_([r.seq for r in doomed])))
    deltas: dict[tuple[int, int], int] = {}
    for row in doomed:
        deltas[(row.stream_sid, row.status)] = deltas.get((row.stream_sid, row.status), 0) - 1
    _count(conn, deltas)
    return len(doomed)
