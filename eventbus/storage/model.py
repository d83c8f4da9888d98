"""The schema: one MetaData for every table, used by queries and migrations.

Times are integers (epoch microseconds); event bodies are compact JSON text,
spliced into responses without being decoded again; ``seq`` orders events.
"""

from __future__ import annotations

import sqlalchemy as sa

metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_N_name)s",
        "uq": "uq_%(table_name)s_%(column_0_N_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
        "pk": "pk_%(table_name)s",
    }
)

# SQLite only makes an INTEGER PRIMARY KEY the fast rowid alias; PostgreSQL
# wants BIGINT for a key that may pass two billion.
BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")

streams = sa.Table(
    "streams",
    metadata,
    sa.Column("sid", BigId, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False, unique=True),
    sa.Column("name", sa.String(255), nullable=False, unique=True),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("max_deliveries", sa.Integer, nullable=True),
    sa.Column("retention_seconds", sa.BigInteger, nullable=True),
)

events = sa.Table(
    "events",
    metadata,
    sa.Column("seq", BigId, primary_key=True, autoincrement=True),
    sa.Column("id", sa.String(36), nullable=False, unique=True),
    sa.Column(
        "stream_sid",
        BigId,
        sa.ForeignKey("streams.sid", ondelete="CASCADE"),
        nullable=False,
    ),
    sa.Column("status", sa.SmallInteger, nullable=False),
    sa.Column("created_at", sa.BigInteger, nullable=False),
    sa.Column("body", sa.Text, nullable=False),
    sa.Column("deliveries", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_id", sa.String(36), nullable=True),
    sa.Column("lease_expires", sa.BigInteger, nullable=True),
    sa.Column("idem_key", sa.String(255), nullable=True),
    # process_events / retry_events: one stream's rows of one status, in order.
    sa.Index("ix_events_stream_status_seq", "stream_sid", "status", "seq"),
    # get_stream_events and paging: one stream's rows in order.
    sa.Index("ix_events_stream_seq", "stream_sid", "seq"),
    # retention purge: oldest first.
    sa.Index("ix_events_created_at", "created_at"),
    # idempotent writes: one key per stream; only keyed events are indexed.
    sa.Index(
        "ix_events_stream_key",
        "stream_sid",
        "idem_key",
        unique=True,
        sqlite_where=sa.text("idem_key IS NOT NULL"),
        postgresql_where=sa.text("idem_key IS NOT NULL"),
    ),
    # lease expiry sweep (dead letters): only the rows that hold a lease.
    sa.Index(
        "ix_events_lease_expires",
        "lease_expires",
        sqlite_where=sa.text("lease_expires IS NOT NULL"),
        postgresql_where=sa.text("lease_expires IS NOT NULL"),
    ),
    # seq is never reused, even after the newest events are deleted (a
    # reader's after_seq cursor must never see a number twice). PostgreSQL's
    # sequence already behaves so; SQLite needs AUTOINCREMENT.
    sqlite_autoincrement=True,
)

# Counts of each stream's events by status, kept in the same transactions
# that change them, so stats never count rows (cheap on millions of events).
stream_counts = sa.Table(
    "stream_counts",
    metadata,
    sa.Column(
        "stream_sid",
        BigId,
        sa.ForeignKey("streams.sid", ondelete="CASCADE"),
        primary_key=True,
    ),
    sa.Column("status", sa.SmallInteger, primary_key=True),
    sa.Column("n", sa.BigInteger, nullable=False, server_default="0"),
)
