"""Copy an Event Bus database into an empty one: SQLite to PostgreSQL.

::

    python -m eventbus.copydb sqlite:///eventbus.db postgresql+psycopg://user@host/eventbus

Stop the servers on the source first. The target's schema is created (or
migrated) as the server would; a target that already holds streams or events
is refused. Streams and events keep their ids, their ``sid``/``seq`` numbers
(so write order and paging positions carry over), their statuses, delivery
counts, leases and idempotency keys; the per-stream counts are rebuilt from
the copied events; PostgreSQL's sequences are set past the copied numbers, so
new streams and events sort after the old ones. Everything lands in one
transaction on the target: an interrupted copy leaves it empty.

The source is read in one transaction (a consistent snapshot) and must be at
this version's schema: start this version's server on it once if it is not.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.engine import make_url

from eventbus.storage import migrate
from eventbus.storage.engines import make_engine
from eventbus.storage.model import events, stream_counts, streams

BATCH = 5000


class CopyError(Exception):
    """The copy cannot be done; the message says why. Nothing was changed."""


@dataclass
class CopyReport:
    streams: int = 0
    events: int = 0
    by_status: dict[int, int] = field(default_factory=dict)
    leased: int = 0
    max_seq: int = 0

    def lines(self) -> list[str]:
        statuses = ", ".join(f"{n} with status {s}" for s, n in sorted(self.by_status.items()))
        return [
            f"copied {self.streams} streams and {self.events} events"
            + (f" ({statuses})" if statuses else ""),
            f"{self.leased} events carry a lease; the highest seq is {self.max_seq}",
        ]


def copy_database(source_url: str, target_url: str, batch: int = BATCH) -> CopyReport:
    """Blocking: copy every stream and event of ``source_url`` into the empty
    database at ``target_url``; raise :class:`CopyError` if it cannot."""
    if make_url(source_url) == make_url(target_url):
        raise CopyError("the source and the target are the same database")
    source = make_engine(source_url, role="reader")
    try:
        with source.connect() as src, src.begin():
            revision = migrate.current_revision(src)
            if revision != migrate.head_revision():
                raise CopyError(
                    f"the source's schema is at revision {revision!r}, this version's is "
                    f"{migrate.head_revision()!r}: start this version's server on it once, then copy"
                )
            migrate.upgrade(target_url)
            target = make_engine(target_url, role="admin")
            try:
                with target.connect() as dst, dst.begin():
                    return _copy(src, dst, batch)
            finally:
                target.dispose()
    finally:
        source.dispose()


def _copy(src: sa.Connection, dst: sa.Connection, batch: int) -> CopyReport:
    pg = dst.dialect.name == "postgresql"
    if pg:
        # Nothing else may write while we look and fill (a server started on
        # the target too early waits, then finds the streams there).
        dst.exec_driver_sql("LOCK TABLE streams, events, stream_counts IN EXCLUSIVE MODE")
    n_streams = dst.execute(sa.select(sa.func.count()).select_from(streams)).scalar_one()
    n_events = dst.execute(sa.select(sa.func.count()).select_from(events)).scalar_one()
    if n_streams or n_events:
        raise CopyError(
            f"the target is not empty ({n_streams} streams, {n_events} events): copy only into a new database"
        )
    report = CopyReport()
    for rows in _pages(src, streams, streams.c.sid, batch):
        dst.execute(sa.insert(streams), rows)
        report.streams += len(rows)
    for rows in _pages(src, events, events.c.seq, batch):
        dst.execute(sa.insert(events), rows)
        report.events += len(rows)
        report.max_seq = rows[-1]["seq"]
        for row in rows:
            report.by_status[row["status"]] = report.by_status.get(row["status"], 0) + 1
            if row["lease_expires"] is not None:
                report.leased += 1
    _rebuild_counts(dst)
    if pg:
        for table, column in (("streams", "sid"), ("events", "seq")):
            dst.exec_driver_sql(
                f"SELECT setval(pg_get_serial_sequence('{table}', '{column}'), "
                f"COALESCE((SELECT max({column}) FROM {table}), 0) + 1, false)"
            )
    _verify(src, dst, report)
    return report


def _pages(conn: sa.Connection, table: sa.Table, key: sa.Column, batch: int) -> Iterator[list[dict]]:
    """All rows of ``table`` in ``key`` order, ``batch`` at a time (keyset paging)."""
    last = None
    while True:
        query = sa.select(table).order_by(key).limit(batch)
        if last is not None:
            query = query.where(key > last)
        rows = [dict(row._mapping) for row in conn.execute(query)]
        if not rows:
            return
        yield rows
        last = rows[-1][key.name]


def _rebuild_counts(dst: sa.Connection) -> None:
    """One row per stream and status, counted from the copied events."""
    counted = (
        sa.select(events.c.stream_sid, events.c.status, sa.func.count().label("n"))
        .group_by(events.c.stream_sid, events.c.status)
        .subquery()
    )
    every = sa.union_all(
        *(sa.select(sa.literal(s, sa.SmallInteger).label("status")) for s in range(4))
    ).subquery()
    dst.execute(
        sa.insert(stream_counts).from_select(
            ["stream_sid", "status", "n"],
            sa.select(streams.c.sid, every.c.status, sa.func.coalesce(counted.c.n, 0))
            .select_from(streams)
            .join(every, sa.true())
            .outerjoin(
                counted, sa.and_(counted.c.stream_sid == streams.c.sid, counted.c.status == every.c.status)
            ),
        )
    )


def _verify(src: sa.Connection, dst: sa.Connection, report: CopyReport) -> None:
    """The target now holds what the source holds, counted both sides."""
    for table in (streams, events):
        there = dst.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        here = src.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
        if there != here:
            raise CopyError(f"{table.name}: {here} in the source but {there} copied; nothing was kept")
    total = dst.execute(sa.select(sa.func.coalesce(sa.func.sum(stream_counts.c.n), 0))).scalar_one()
    if total != report.events:
        raise CopyError(f"the rebuilt counts add up to {total}, not {report.events}; nothing was kept")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m eventbus.copydb",
        description="Copy an Event Bus database (e.g. SQLite) into a new, empty one (e.g. PostgreSQL).",
    )
    parser.add_argument("source", help="SQLAlchemy URL to copy from, e.g. sqlite:///eventbus.db")
    parser.add_argument("target", help="SQLAlchemy URL to copy into, e.g. postgresql+psycopg://user@host/db")
    parser.add_argument("--batch", type=int, default=BATCH, help=f"rows per statement (default {BATCH})")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error("--batch must be at least 1")
    try:
        report = copy_database(args.source, args.target, args.batch)
    except CopyError as e:
        print(f"copydb: {e}", file=sys.stderr)
        return 1
    except sa.exc.SQLAlchemyError as e:
        print(
            f"copydb: database error, nothing was copied: {' '.join(str(e.args[0]).split())}", file=sys.stderr
        )
        return 1
    for line in report.lines():
        print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
