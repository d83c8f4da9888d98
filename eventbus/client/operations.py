"""The operations of PROTOCOL.md 5 and 7, one method each, written once.

:class:`Operations` builds each request with :mod:`eventbus.client.calls`
and hands it to ``_submit(call)``, which each client defines:

- :class:`~eventbus.client.blocking.Client` sends it and returns its result
  (or raises its error);
- :class:`~eventbus.client.blocking.Pipeline` queues it and returns the index
  of its slot in ``results``;
- :class:`~eventbus.client.deferred.TwistedClient` sends it and returns a
  Deferred of its result.

Each method's docstring names the result the call carries. ``exit`` is not
here: the blocking client also waits for the server to close, and a pipeline
does not offer it.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable
from typing import Any, Generic, TypeVar

from eventbus.client import calls
from eventbus.client.calls import Call
from eventbus.client.models import Status

#: What ``_submit`` returns: a call's result, a pipeline index, a Deferred.
R = TypeVar("R")


class Operations(ABC, Generic[R]):
    """One method per operation; ``_submit`` decides what a method returns."""

    @abstractmethod
    def _submit(self, call: Call[Any]) -> R:
        """Send or queue ``call``; what the operation methods return."""

    def health(self) -> R:
        """Raises unless the server answers (needs no credentials). Result: None."""
        return self._submit(calls.health())

    def list_streams(self) -> R:
        """Every stream. Result: a list of :class:`~eventbus.client.models.Stream`."""
        return self._submit(calls.list_streams())

    def create_stream(
        self, name: str, *, max_deliveries: int | None = None, retention_seconds: int | None = None
    ) -> R:
        """Create a stream. Result: the new :class:`~eventbus.client.models.Stream`."""
        return self._submit(
            calls.create_stream(name, max_deliveries=max_deliveries, retention_seconds=retention_seconds)
        )

    def delete_stream(self, name: str) -> R:
        """Delete a stream and its events. Result: None."""
        return self._submit(calls.delete_stream(name))

    def get_stream_info(self, name: str) -> R:
        """The stream and its counts by status (``stats``).
        Result: :class:`~eventbus.client.models.StreamInfo`."""
        return self._submit(calls.get_stream_info(name))

    def get_stream_events(self, name: str, *, limit: int | None = None, after_seq: int | None = None) -> R:
        """One page of every event, any status, in write order.
        Result: :class:`~eventbus.client.models.EventPage`."""
        return self._submit(calls.get_stream_events(name, limit=limit, after_seq=after_seq))

    def process_events(
        self,
        name: str,
        *,
        limit: int | None = None,
        after_seq: int | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float | None = None,
    ) -> R:
        """Unprocessed events; with ``lease_seconds`` they are this caller's
        alone until marked or the lease ends; ``wait_seconds`` long-polls.
        Result: :class:`~eventbus.client.models.EventPage`."""
        return self._submit(
            calls.process_events(
                name, limit=limit, after_seq=after_seq, lease_seconds=lease_seconds, wait_seconds=wait_seconds
            )
        )

    def retry_events(
        self,
        name: str,
        *,
        limit: int | None = None,
        after_seq: int | None = None,
        lease_seconds: int | None = None,
        wait_seconds: float | None = None,
    ) -> R:
        """Events marked retry (status 2); the same options as process_events.
        Result: :class:`~eventbus.client.models.EventPage`."""
        return self._submit(
            calls.retry_events(
                name, limit=limit, after_seq=after_seq, lease_seconds=lease_seconds, wait_seconds=wait_seconds
            )
        )

    def write_event(self, name: str, event: Any, *, key: str | None = None) -> R:
        """Write one JSON value; with ``key`` a repeated write returns the first
        event (``duplicate=True``), which also makes it safe to resend.
        Result: :class:`~eventbus.client.models.Written`."""
        return self._submit(calls.write_event(name, event, key=key))

    def write_events(self, name: str, events: Iterable[Any]) -> R:
        """Write 1 to 1,000 values in one commit: all or none.
        Result: a list of :class:`~eventbus.client.models.Event`."""
        return self._submit(calls.write_events(name, events))

    def mark_event(self, event_id: str, status: int | str | Status, *, lease_id: str | None = None) -> R:
        """Set an event's status; with ``lease_id`` only while that lease is current.
        Result: None."""
        return self._submit(calls.mark_event(event_id, status, lease_id=lease_id))

    def mark_events(
        self, event_ids: Iterable[str], status: int | str | Status, *, lease_id: str | None = None
    ) -> R:
        """Set several events' status (``lease_id`` as in mark_event).
        Result: :class:`~eventbus.client.models.MarkResult`."""
        return self._submit(calls.mark_events(event_ids, status, lease_id=lease_id))
