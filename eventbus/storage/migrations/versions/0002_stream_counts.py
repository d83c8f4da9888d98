"""Per-stream counts of events by status, so stats need no counting.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stream_counts",
        sa.Column("stream_sid", BigId, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("n", sa.BigInteger, nullable=False, server_default="0"),
        sa.PrimaryKeyConstraint("stream_sid", "status", name="pk_stream_counts"),
        sa.ForeignKeyConstraint(
            ["stream_sid"],
            ["streams.sid"],
            name="fk_stream_counts_stream_sid_streams",
            ondelete="CASCADE",
        ),
    )
    # Existing streams: one row per status, filled from the events.
    op.execute(
        "INSERT INTO stream_counts (stream_sid, status, n) "
        "SELECT s.sid, st.status, "
        "(SELECT count(*) FROM events e WHERE e.stream_sid = s.sid AND e.status = st.status) "
        "FROM streams s CROSS JOIN "
        "(SELECT 0 AS status UNION ALL SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3) st"
    )


def downgrade() -> None:
    op.drop_table("stream_counts")
