"""Event Bus: a durable event bus server speaking newline-delimited JSON."""

__version__ = "0.1.0"
