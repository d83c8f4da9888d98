"""Engines for the writer and the readers, with each database's settings.

SQLite: WAL, ``synchronous=FULL`` (an acknowledged write survives power
loss), foreign keys, a busy timeout and a bounded WAL. The writer's
transactions start with ``BEGIN IMMEDIATE`` so it takes the write lock up
front instead of failing on upgrade; readers use plain ``BEGIN`` for a
consistent snapshot. PostgreSQL needs nothing special: READ COMMITTED.
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.engine import URL, make_url

BUSY_TIMEOUT_MS = 5000


def is_sqlite(url: str | URL) -> bool:
    return make_url(url).get_backend_name() == "sqlite"


def make_engine(url: str | URL, *, role: str, pool_size: int = 1) -> sa.Engine:
    """An engine for ``role`` "writer" or "reader" (or "admin" for migrations)."""
    url = make_url(url)
    if url.get_backend_name() != "sqlite":
        return sa.create_engine(
            url,
            pool_size=pool_size,
            max_overflow=0,
            pool_pre_ping=True,
            isolation_level="READ COMMITTED",
        )
    engine = sa.create_engine(
        url,
        pool_size=pool_size,
        max_overflow=0,
        connect_args={
            "check_same_thread": False,
            "timeout": BUSY_TIMEOUT_MS / 1000,
            # We issue BEGIN ourselves (below); pysqlite's own implicit
            # transactions would otherwise defer and reorder it.
            "isolation_level": None,
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
            f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}",
            "PRAGMA journal_size_limit=67108864",
            "PRAGMA cache_size=-65536",
        ):
            cursor.execute(pragma)
        cursor.close()

    @sa.event.listens_for(engine, "begin")
    def _begin(conn) -> None:
        conn.exec_driver_sql(begin)

    return engine
