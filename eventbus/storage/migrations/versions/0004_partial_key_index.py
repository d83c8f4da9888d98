"""Index idempotency keys only where there is one.

Most events are written without a key; a unique index over (stream_sid,
idem_key) still took an entry for each of them, one more B-tree to update
per insert for nothing. The partial index holds keyed events alone, is as
unique, and serves the lookup ``stream_sid = ? AND idem_key = ?`` (which
implies ``idem_key IS NOT NULL``) on both backends.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

_KEYED = sa.text("idem_key IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_events_stream_key", table_name="events")
    op.create_index(
        "ix_events_stream_key",
        "events",
        ["stream_sid", "idem_key"],
        unique=True,
        sqlite_where=_KEYED,
        postgresql_where=_KEYED,
    )


def downgrade() -> None:
    op.drop_index("ix_events_stream_key", table_name="events")
    op.create_index("ix_events_stream_key", "events", ["stream_sid", "idem_key"], unique=True)
