"""Storage: SQLAlchemy Core over SQLite or PostgreSQL, off the reactor thread."""
