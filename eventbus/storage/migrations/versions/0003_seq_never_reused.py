"""SQLite: make events.seq AUTOINCREMENT, so a seq is never handed out twice.

Without it SQLite reuses the numbers of the newest events once they are
deleted (a deleted stream, a retention purge), and a reader paging with
after_seq would skip the new events that get them. PostgreSQL's sequence
never reuses a number: nothing to do there.

Revision ID: 0003
Revises: 0002
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    # Rebuilds the table (copying its rows); the copy's explicit seqs set
    # the sequence to the highest one.
    with op.batch_alter_table(
        "events", recreate="always", table_kwargs={"sqlite_autoincrement": True}
    ) as batch:
        batch.alter_column("seq", autoincrement=True)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table(
        "events", recreate="always", table_kwargs={"sqlite_autoincrement": False}
    ) as batch:
        batch.alter_column("seq", autoincrement=True)
