"""One read transaction for the admin listener: every stream and its counts.

Built from the queries the operations use (``list_streams_txn``,
``stats_txn``), so it costs what ``get_stream_info`` costs per stream (kept
counters, not row counts) and agrees with it exactly. Capped at ``limit``
streams so a server with very many streams is not read whole every few
seconds.
"""

from __future__ import annotations

from typing import NamedTuple

import sqlalchemy as sa

from eventbus import errors
from eventbus.storage import queries as q


class StreamCounts(NamedTuple):
    name: str
    created_at: int
    counts: dict[str, int]  # unprocessed, processed, retry, dead, leased, total


class Overview(NamedTuple):
    streams: list[StreamCounts]
    total_streams: int  # beyond ``limit``, only counted


def stream_overview_txn(conn: sa.Connection, now: int, limit: int) -> Overview:
    all_streams = q.list_streams_txn(conn)
    rows = []
    for stream in all_streams[:limit]:
        try:
            _, stats = q.stats_txn(conn, stream.name, now)
        except errors.BusError:  # deleted since the listing (PostgreSQL: another node)
            continue
        rows.append(StreamCounts(stream.name, stream.created_at, dict(stats._asdict())))
    return Overview(rows, len(all_streams))


def ping_txn(conn: sa.Connection) -> bool:
    """The database answers a query."""
    return conn.execute(sa.text("SELECT 1")).scalar_one() == 1
