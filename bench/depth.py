"""A deep database, built fast: millions of unprocessed events.

It is built through the project's own storage code (migrations, the
writer's engine settings, ``create_stream_txn`` and ``write_events_txn``),
in large transactions, before the server opens it: so the rows, indexes
and kept counts are exactly what the server itself would have written.
"""

from __future__ import annotations

import time
from pathlib import Path

import orjson

from bench.wire import EVENT
from eventbus.storage import migrate, queries
from eventbus.storage.engines import make_engine

DEEP_STREAM = "deep"
CHUNK = 1000  # events per write_events_txn call, each at its own time
PER_TRANSACTION = 100_000


def build(path: Path, events: int, other_streams: int, other_events: int) -> float:
    """Create the database at ``path``; returns the seconds it took.

    ``DEEP_STREAM`` gets ``events`` unprocessed events; ``other_streams``
    streams named ``other-N`` get ``other_events`` each.
    """
    started = time.perf_counter()
    url = f"sqlite:///{path}"
    migrate.upgrade(url)
    engine = make_engine(url, role="writer")
    body = orjson.dumps(EVENT).decode()
    plan = [(DEEP_STREAM, events)] + [(f"other-{i}", other_events) for i in range(other_streams)]
    try:
        with engine.connect() as conn:
            now = int(time.time() * 1_000_000)
            with conn.begin():
                for name, _ in plan:
                    queries.create_stream_txn(conn, name, now)
            for name, count in plan:
                left = count
                while left > 0:
                    with conn.begin():
                        in_txn = min(left, PER_TRANSACTION)
                        left -= in_txn
                        while in_txn > 0:
                            n = min(in_txn, CHUNK)
                            in_txn -= n
                            now = max(now + 1000, int(time.time() * 1_000_000))
                            queries.write_events_txn(conn, name, [body] * n, now)
    finally:
        engine.dispose()
    return time.perf_counter() - started
