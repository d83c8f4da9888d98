"""Bring a database's schema to the newest version with Alembic."""

from __future__ import annotations

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from eventbus.storage.engines import make_engine

# PostgreSQL: nodes starting together take turns (an arbitrary fixed key).
_PG_MIGRATION_LOCK = 0x6576656E74627573


def alembic_config() -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", "eventbus.storage:migrations")
    return cfg


def head_revision() -> str:
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str, revision: str = "head") -> None:
    """Blocking: migrate the database at ``url`` to ``revision``."""
    engine = make_engine(url, role="admin")
    try:
        with engine.connect() as conn:
            pg = conn.dialect.name == "postgresql"
            if pg:
                conn.exec_driver_sql(f"SELECT pg_advisory_lock({_PG_MIGRATION_LOCK})")
                conn.commit()
            try:
                cfg = alembic_config()
                cfg.attributes["connection"] = conn
                command.upgrade(cfg, revision)
                conn.commit()
            finally:
                if pg:
                    conn.exec_driver_sql(f"SELECT pg_advisory_unlock({_PG_MIGRATION_LOCK})")
                    conn.commit()
    finally:
        engine.dispose()
