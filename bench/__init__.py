"""``make bench``: Event Bus against its ceiling (echo) and its peer (Redis)."""
