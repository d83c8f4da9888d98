"""Python clients for Event Bus.

- :class:`Client`: blocking, for ordinary programs (threads: one client each).
- :class:`eventbus.client.deferred.TwistedClient`: Deferreds, for programs
  that run a reactor.
- ``client.consume(stream, lease_seconds=30)``: the worker loop.

Results are the plain dataclasses of :mod:`eventbus.client.models`; refusals
raise :class:`RequestError` (with ``code`` and ``reason``), lost connections
:class:`ConnectionFailed`.
"""

from eventbus.client.address import Address, parse_address
from eventbus.client.blocking import Client, Pipeline, TLSFailed
from eventbus.client.consumer import Consumer
from eventbus.client.errors import (
    ConnectionFailed,
    EventBusError,
    EventNotFound,
    Forbidden,
    InvalidRequest,
    LeaseLost,
    ProtocolError,
    RequestError,
    StreamExists,
    StreamNotFound,
    Unauthorized,
    Unavailable,
)
from eventbus.client.models import Event, EventPage, MarkResult, Stats, Status, Stream, StreamInfo, Written

__all__ = [
    "Address",
    "Client",
    "ConnectionFailed",
    "Consumer",
    "Event",
    "EventBusError",
    "EventNotFound",
    "EventPage",
    "Forbidden",
    "InvalidRequest",
    "LeaseLost",
    "MarkResult",
    "Pipeline",
    "ProtocolError",
    "RequestError",
    "Stats",
    "Status",
    "Stream",
    "StreamExists",
    "StreamInfo",
    "StreamNotFound",
    "TLSFailed",
    "Unauthorized",
    "Unavailable",
    "Written",
    "parse_address",
]
