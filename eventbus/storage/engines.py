"""Engines for the writer and the readers, with each database's settings.

SQLite: WAL, ``synchronous=FULL`` (an acknowledged write survives power
loss), foreign keys, a busy timeout and a bounded WAL. The writer's
transactions start with ``BEGIN IMMEDIATE`` so it takes the write lock up
front instead of failing on upgrade; readers use plain ``BEGIN`` for a
consistent snapshot.

PostgreSQL: READ COMMITTED, a connection timeout, TCP keepalives (a dead
server is noticed), ``lock_timeout`` from the busy timeout (a write never
waits forever behind another node's lock), connections checked before use
(``pool_pre_ping``) so a restarted server costs one failed transaction, not
a pool of broken connections.

Both: :func:`at_commit` gathers work that a transaction does once, just
before it commits, whatever jobs the group commit put in it (the stream
counters, in one key order; NOTIFY on PostgreSQL).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

BUSY_TIMEOUT_MS = 5000
CONNECT_TIMEOUT_S = 5
#: The LISTEN/NOTIFY channel: the payload is the name of a changed stream.
NOTIFY_CHANNEL = "eventbus"

_PENDING = "eventbus.at_commit"
T = TypeVar("T")


def pg_connect_args(url: URL, role: str, busy_timeout_ms: int = BUSY_TIMEOUT_MS) -> dict[str, Any]:
    """libpq settings for a connection of ``role``; the URL's own query wins."""
    args: dict[str, Any] = {
        "connect_timeout": CONNECT_TIMEOUT_S,
        "application_name": f"eventbus-{role}",
        "keepalives": 1,
        "keepalives_idle": 10,
        "keepalives_interval": 5,
        "keepalives_count": 3,
    }
    if role in ("writer", "reader"):
        # Not for "admin": migrations wait on an advisory lock for as long
        # as another node's migration takes.
        args["options"] = f"-c lock_timeout={int(busy_timeout_ms)}"
    return {k: v for k, v in args.items() if k not in url.query}


def make_engine(
    url: str | URL, *, role: str, pool_size: int = 1, busy_timeout_ms: int = BUSY_TIMEOUT_MS
) -> sa.Engine:
    """An engine for ``role`` "writer" or "reader" (or "admin" for migrations).

    ``hide_parameters``: a failing statement's error (logged with its
    traceback) must not carry event bodies or other client data.
    """
    url = make_url(url)
    if url.drivername == "postgresql":
        url = url.set(drivername="postgresql+psycopg")  # psycopg 3, not SQLAlchemy's default psycopg2
    if url.get_backend_name() != "sqlite":
        engine = sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_pre_ping=True,
            isolation_level="READ COMMITTED",
            hide_parameters=True,
            connect_args=pg_connect_args(url, role, busy_timeout_ms),
        )

        @sa.event.listens_for(engine, "begin")
        def _begin_pg(conn: sa.Connection) -> None:
            conn.info[_PENDING] = {}

        _install_commit_hook(engine)
        return engine
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        hide_parameters=True,
        connect_args={
            "check_same_thread": False,
            "timeout": busy_timeout_ms / 1000,
            # We issue BEGIN ourselves (below); pysqlite's own implicit
            # transactions would otherwise defer and reorder it.
            "isolation_level": None,
            # Prepared statements kept: the writer's inserts alone are one
            # per row count up to queries._INSERT_CHUNK (64); the default 128.
            "cached_statements": 256,
        },
    )
    begin = "BEGIN IMMEDIATE" if role == "writer" else "BEGIN"

    @sa.event.listens_for(engine, "connect")
    def _configure(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in (
            "PRAGMA journal_mode=WAL",
            "PRAGMA synchronous=FULL",
            "PRAGMA foreign_keys=ON",
            f"PRAGMA busy_timeout={int(busy_timeout_ms)}",
            "PRAGMA journal_size_limit=67108864",
            # 8 MiB of page cache per connection, not 64: the writer only
            # touches the right-hand edge of each index, readers lean on the
            # OS page cache, and 64 MiB each (writer + readers) filled up
            # under load as RSS growth (+48 MB in 40 s of writes; 1 + 4
            # connections could reach 320 MB).
            "PRAGMA cache_size=-8192",
            # A group commit's multi-row insert keeps a statement journal
            # (the pages it changes, in case it fails half-way); past 64 KiB
            # SQLite spilled it to a new file in /var/tmp: an open, writes
            # and an unlink on some commits of 30 events and on every one
            # of 300 (strace). In memory it is a copy: 64 x 1 writes x1.13.
            "PRAGMA temp_store=MEMORY",
        ):
            cursor.execute(pragma)
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        # Straight to the driver: every group commit begins here.
        conn.connection.driver_connection.execute(begin)
        conn.info[_PENDING] = {}

    _install_commit_hook(engine)
    return engine


# -- work done once per transaction, just before it commits --------------------


def at_commit(
    conn: sa.Connection, name: str, flush: Callable[[sa.Connection, T], None], factory: Callable[[], T]
) -> T:
    """The transaction's accumulator ``name`` (made by ``factory`` on first
    use); ``flush(conn, value)`` runs on it just before the commit, in the
    same transaction. A rollback drops it. Only for engines of
    :func:`make_engine`."""
    try:
        pending = conn.info[_PENDING]
    except KeyError:
        raise RuntimeError("at_commit needs a transaction on an engine from make_engine()") from None
    entry = pending.get(name)
    if entry is None:
        entry = pending[name] = (flush, factory())
    return entry[1]


def _install_commit_hook(engine: sa.Engine) -> None:
    @sa.event.listens_for(engine, "commit")
    def _flush_pending(conn: sa.Connection) -> None:
        pending = conn.info.pop(_PENDING, None)
        if not pending:
            return
        try:
            for flush, value in pending.values():
                flush(conn, value)
        except BaseException:
            _abandon(conn)
            raise


def _abandon(conn: sa.Connection) -> None:
    """A flush failed inside COMMIT: SQLAlchemy will neither commit nor roll
    back the database transaction then, so roll it back here (or drop the
    connection) to leave the connection usable."""
    if conn.invalidated:
        return
    try:
        conn.connection.dbapi_connection.rollback()
    except Exception:
        conn.invalidate()
