"""What a client call can raise.

:class:`RequestError` and its subclasses: the server answered and refused
(``code`` and ``reason`` are the response's). :class:`ConnectionFailed`: no
answer came; its ``maybe_applied`` says whether the request may have reached
the server (so whether retrying could apply it twice).
"""

from __future__ import annotations

from typing import Any


class EventBusError(Exception):
    """Base of every error the client raises."""


class RequestError(EventBusError):
    """The server refused a request: ``code`` is stable, ``reason`` is for people."""

    def __init__(self, code: str, reason: str, operation: str = "", context: Any = None) -> None:
        super().__init__(f"{reason} ({code})")
        self.code = code
        self.reason = reason
        self.operation = operation
        self.context = context


class StreamNotFound(RequestError):
    pass


class StreamExists(RequestError):
    pass


class EventNotFound(RequestError):
    pass


class LeaseLost(RequestError):
    pass


class Unauthorized(RequestError):
    pass


class Forbidden(RequestError):
    pass


class InvalidRequest(RequestError):
    """The request was malformed (bad field, missing field, bad status...)."""


class Unavailable(RequestError):
    """The server could not serve it now; nothing was changed, safe to retry."""


_BY_CODE: dict[str, type[RequestError]] = {
    "stream_not_found": StreamNotFound,
    "stream_exists": StreamExists,
    "event_not_found": EventNotFound,
    "lease_lost": LeaseLost,
    "unauthorized": Unauthorized,
    "forbidden": Forbidden,
    "invalid_json": InvalidRequest,
    "unknown_operation": InvalidRequest,
    "missing_fields": InvalidRequest,
    "invalid_field": InvalidRequest,
    "invalid_status": InvalidRequest,
    "line_too_long": InvalidRequest,
    "unavailable": Unavailable,
}


def error_from_response(response: dict[str, Any]) -> RequestError:
    """The exception for a ``status: false`` response (unknown codes: RequestError)."""
    code = str(response.get("code") or "error")
    cls = _BY_CODE.get(code, RequestError)
    return cls(
        code,
        str(response.get("reason") or "request failed"),
        str(response.get("operation") or ""),
        response.get("context"),
    )


class ConnectionFailed(EventBusError):
    """No answer: the server could not be reached or the connection broke.

    ``maybe_applied`` is False when the request certainly never reached the
    server (the connection could not be made), True when it was sent and the
    answer was lost, so the server may have carried it out.
    """

    def __init__(self, message: str, maybe_applied: bool = False) -> None:
        super().__init__(message)
        self.maybe_applied = maybe_applied


class ProtocolError(EventBusError):
    """The server sent something that is not a response line of this protocol."""
