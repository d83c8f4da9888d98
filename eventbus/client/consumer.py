"""The worker loop: long-poll with leases, hand out events, mark each one.

::

    consumer = client.consume("orders", lease_seconds=30)
    for event in consumer:
        handle(event.body)

When the loop body returns normally (the loop asks for the next event), the
event is marked processed (status 1) under its ``lease_id``. When the body
raises, the event is marked retry (status 2) and the exception goes on up:
the loop ends, nothing is swallowed. A plain ``for`` loop cannot tell a
``break`` from an exception (both just abandon the iterator), so ``break``
marks the event in hand retry too; to leave the loop after finishing an
event, call :meth:`Consumer.stop` in the body instead.

To keep going after a failure, either call ``consumer.settle(Status.RETRY)``
in the body (or ``Status.DEAD`` for an event that can never succeed) and
carry on, or use :meth:`Consumer.run`, which calls a handler per event,
marks retry on an exception, logs it and continues.

Each round first takes events marked retry (without waiting), then new
events, waiting up to ``wait_seconds`` for some: when idle, a failing event
is retried about once per ``wait_seconds``. Events whose lease ran out before
their turn in a batch are skipped (the server offers them again). A mark
refused with ``lease_lost`` (this consumer was too slow; another one has the
event now) is counted in ``lease_lost`` and the loop goes on.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from eventbus.client.errors import ConnectionFailed, LeaseLost, RequestError
from eventbus.client.models import Event, Status

if TYPE_CHECKING:
    from eventbus.client.blocking import Client

log = logging.getLogger("eventbus.client.consumer")


class Consumer:
    def __init__(
        self,
        client: Client,
        stream: str,
        *,
        lease_seconds: int = 30,
        batch: int = 10,
        wait_seconds: float = 10,
        retries: bool = True,
        max_events: int | None = None,
    ) -> None:
        self.client = client
        self.stream = stream
        self.lease_seconds = lease_seconds
        self.batch = batch
        self.wait_seconds = wait_seconds
        self.retries = retries
        self.max_events = max_events
        #: Counts, for logs and tests.
        self.processed = 0
        self.failed = 0
        self.lease_lost = 0
        self.expired = 0
        self._stopping = False
        self._outcome: Status | None = None

    def stop(self) -> None:
        """Finish the event in hand (mark it as usual), then end the loop."""
        self._stopping = True

    def settle(self, status: Status | int | str) -> None:
        """How to mark the event in hand when the loop moves on (default: processed)."""
        self._outcome = Status.parse(status)

    def __iter__(self) -> Iterator[Event]:
        return self._events()

    def run(self, handler: Callable[[Event], Any]) -> None:
        """Call ``handler`` for each event until :meth:`stop` (or ``max_events``):
        processed when it returns, retry when it raises (logged, then on to the
        next event)."""
        for event in self:
            try:
                handler(event)
            except Exception:
                log.exception("handler failed on event %s of %r; marked retry", event.id, self.stream)
                self.settle(Status.RETRY)

    # -- the loop -----------------------------------------------------------------

    def _done(self) -> bool:
        handed = self.processed + self.failed
        return self._stopping or (self.max_events is not None and handed >= self.max_events)

    def _events(self) -> Iterator[Event]:
        batch: list[tuple[Event, float]] = []
        current: Event | None = None
        try:
            while not self._done():
                batch = self._fetch()
                while batch and not self._done():
                    event, deadline = batch.pop(0)
                    if time.monotonic() >= deadline:
                        self.expired += 1
                        continue
                    current = event
                    self._outcome = None
                    yield event
                    current = None
                    outcome = self._outcome or Status.PROCESSED
                    self._count(outcome)
                    self._mark(event, outcome)
        finally:
            # Abandoned mid-event (exception or break in the loop body): retry
            # it; events fetched but never handed out go back at once.
            if current is not None:
                self.failed += 1
                self._mark(current, Status.RETRY)
            for event, _ in batch:
                self._mark(event, event.status)

    def _count(self, outcome: Status) -> None:
        if outcome == Status.PROCESSED:
            self.processed += 1
        else:
            self.failed += 1

    def _fetch(self) -> list[tuple[Event, float]]:
        lost = 0
        while True:
            try:
                return self._fetch_once()
            except ConnectionFailed as e:
                # A lease request whose answer was lost: those events come back
                # after their lease. Try again on a fresh connection, a few times.
                lost += 1
                if not e.maybe_applied or lost > self.client.retries:
                    raise
                log.warning("connection lost while leasing from %r; reconnecting", self.stream)

    def _fetch_once(self) -> list[tuple[Event, float]]:
        size = self.batch
        if self.max_events is not None:
            size = max(1, min(size, self.max_events - self.processed - self.failed))
        if self.retries:
            started = time.monotonic()
            page = self.client.retry_events(self.stream, limit=size, lease_seconds=self.lease_seconds)
            if page.events:
                return self._deadlines(page.events, started)
        started = time.monotonic()
        page = self.client.process_events(
            self.stream, limit=size, lease_seconds=self.lease_seconds, wait_seconds=self.wait_seconds
        )
        return self._deadlines(page.events, started)

    def _deadlines(self, events: list[Event], started: float) -> list[tuple[Event, float]]:
        # Measured from before the request, on our own clock: never later
        # than the server's idea of the lease's end.
        return [(e, started + self.lease_seconds) for e in events]

    def _mark(self, event: Event, status: Status) -> None:
        try:
            self.client.mark_event(event.id, status, lease_id=event.lease_id)
        except LeaseLost:
            self.lease_lost += 1
            log.warning("lease on event %s of %r ran out before it was marked", event.id, self.stream)
        except (ConnectionFailed, RequestError) as e:
            # The lease runs out and the server offers the event again.
            log.warning("could not mark event %s of %r: %s", event.id, self.stream, e)
