"""The error responses of PROTOCOL.md section 6, as one exception type.

Every layer raises :class:`BusError` with a stable ``code``; the operations
layer turns it into a response line. Anything else that escapes is a bug or a
storage fault and is answered ``unavailable``.
"""

from __future__ import annotations

from typing import Any


class BusError(Exception):
    """A failure the client is told about: a code, a sentence, maybe context."""

    def __init__(self, code: str, reason: str, context: Any = None) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason
        self.context = context

    def __repr__(self) -> str:
        return f"BusError({self.code!r}, {self.reason!r})"

    def __reduce__(self) -> tuple:
        # Pickled whole: the writer process sends refusals back to the server.
        return (BusError, (self.code, self.reason, self.context))


def invalid_json() -> BusError:
    return BusError("invalid_json", "invalid json provided")


def unknown_operation(names: list[str]) -> BusError:
    listed = ", ".join(f"'{n}'" for n in names)
    return BusError("unknown_operation", f"operation must be one of: {listed}")


def unauthorized() -> BusError:
    return BusError("unauthorized", "unauthorized to make request")


def missing_fields(fields: list[dict[str, Any]]) -> BusError:
    return BusError("missing_fields", "missing required fields", {"body": fields})


def invalid_field(reason: str) -> BusError:
    return BusError("invalid_field", reason)


def stream_exists(name: str) -> BusError:
    return BusError("stream_exists", f"stream: '{name}' already exists")


def stream_not_found(name: str) -> BusError:
    return BusError("stream_not_found", f"stream '{name}' not found")


def event_not_found(event_id: str) -> BusError:
    return BusError("event_not_found", f"event '{event_id}' not found")


def invalid_status() -> BusError:
    return BusError(
        "invalid_status", "status must be one of: 0 - unprocessed, 1 - processed, 2 - retry, 3 - dead"
    )


def lease_lost(event_id: str) -> BusError:
    return BusError(
        "lease_lost",
        f"lease on event '{event_id}' is no longer current: it ran out or the event was marked",
    )


def forbidden(operation: str, stream: str | None = None) -> BusError:
    where = f" on stream '{stream}'" if stream is not None else ""
    return BusError("forbidden", f"client is not allowed to {operation}{where}")


def line_too_long(limit: int) -> BusError:
    return BusError("line_too_long", f"request line longer than {limit} bytes")


class OutcomeUnknown(Exception):
    """A change the server cannot say was made or not (the SQLite writer
    process died holding it). Not answered ``unavailable``, which promises
    that nothing was changed: the request's connection is closed instead,
    after the answers before it, as a crash would close it, and the client
    knows its outcome is unknown."""


def unavailable(
    reason: str = "the server cannot serve this request now; nothing was changed, retry",
) -> BusError:
    return BusError("unavailable", reason)
