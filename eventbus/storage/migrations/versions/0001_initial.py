"""Initial schema: streams and events.

Revision ID: 0001
Revises:
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "streams",
        sa.Column("sid", BigId, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("max_deliveries", sa.Integer, nullable=True),
        sa.Column("retention_seconds", sa.BigInteger, nullable=True),
        sa.PrimaryKeyConstraint("sid", name="pk_streams"),
        sa.UniqueConstraint("id", name="uq_streams_id"),
        sa.UniqueConstraint("name", name="uq_streams_name"),
    )
    op.create_table(
        "events",
        sa.Column("seq", BigId, primary_key=True, autoincrement=True),
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("stream_sid", BigId, nullable=False),
        sa.Column("status", sa.SmallInteger, nullable=False),
        sa.Column("created_at", sa.BigInteger, nullable=False),
        sa.Column("body", sa.Text, nullable=False),
        sa.Column("deliveries", sa.Integer, nullable=False, server_default="0"),
        sa.Column("lease_id", sa.String(36), nullable=True),
        sa.Column("lease_expires", sa.BigInteger, nullable=True),
        sa.Column("idem_key", sa.String(255), nullable=True),
        sa.PrimaryKeyConstraint("seq", name="pk_events"),
        sa.UniqueConstraint("id", name="uq_events_id"),
        sa.ForeignKeyConstraint(
            ["stream_sid"],
            ["streams.sid"],
            name="fk_events_stream_sid_streams",
            ondelete="CASCADE",
        ),
    )
    op.create_index("ix_events_stream_status_seq", "events", ["stream_sid", "status", "seq"])
    op.create_index("ix_events_stream_seq", "events", ["stream_sid", "seq"])
    op.create_index("ix_events_created_at", "events", ["created_at"])
    op.create_index("ix_events_stream_key", "events", ["stream_sid", "idem_key"], unique=True)
    op.create_index(
        "ix_events_lease_expires",
        "events",
        ["lease_expires"],
        sqlite_where=sa.text("lease_expires IS NOT NULL"),
        postgresql_where=sa.text("lease_expires IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("streams")
