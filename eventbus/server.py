"""The composition root: config in, a service tree out.

Start order: database (migrations), the PostgreSQL change listener (other
nodes' writes wake our long polls), housekeeping, connections, listener.
Stop order is the reverse, one at a time: stop accepting, stop reading and
answer what is in flight, stop housekeeping, stop listening, then commit what
is queued and close the database.
"""

from __future__ import annotations

from typing import Any

from twisted.application.internet import StreamServerEndpointService
from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger

from eventbus.admin import AdminService
from eventbus.auth import Authenticator, FailureThrottle
from eventbus.bus import Events, Streams
from eventbus.config import Config
from eventbus.housekeeping import Housekeeping
from eventbus.metrics import MeteredDatabase, MeteredDispatcher, MeteredEvents, Metrics
from eventbus.notify import ChangeNotifier
from eventbus.operations import OPERATIONS, Dispatcher
from eventbus.protocol import BusFactory, Limits
from eventbus.storage.database import Database

DRAIN_TIMEOUT_SECONDS = 30


class EventBusService(MultiService):
    """A MultiService that stops its children one by one, last first."""

    @inlineCallbacks
    def stopService(self) -> Any:
        Service.stopService(self)
        for service in reversed(list(self)):
            yield service.stopService()


class Connections(Service):
    """Owns the open connections; on stop, drains them, then closes them."""

    log = Logger()

    def __init__(self, factory: BusFactory, events: Events, reactor: Any) -> None:
        self.factory = factory
        self.events = events
        self.reactor = reactor

    @inlineCallbacks
    def stopService(self) -> Any:
        super().stopService()
        for conn in list(self.factory.connections):
            conn.stop_reading()
        self.events.stop_waiting()
        drained = self.factory.drained()
        timer = self.reactor.callLater(DRAIN_TIMEOUT_SECONDS, drained.cancel)
        try:
            yield drained
        except Exception:
            self.log.warn("shutdown: gave up waiting for {n} requests", n=self.factory.inflight)
        if timer.active():
            timer.cancel()
        # Answers written are still in the transports' buffers: close
        # politely and wait until they are sent (or, for a peer that does not
        # read them, until the abort deadline of each connection).
        closed = self.factory.all_closed()
        for conn in list(self.factory.connections):
            conn.close(abort_if_blocked=False)
        timer = self.reactor.callLater(self.factory.limits.abort_after_seconds + 1, closed.cancel)
        try:
            yield closed
        except Exception:
            self.log.warn("shutdown: {n} connections would not close", n=len(self.factory.connections))
        if timer.active():
            timer.cancel()
        self.log.info("shutdown: all requests answered")


def build_service(config: Config, reactor: Any, admin: str | None = None) -> EventBusService:
    """``admin``: the admin listener's endpoint (metrics, health, status page), or None."""
    server = config.server
    top = EventBusService()
    # With the admin listener on, the layers are wrapped to feed its metrics.
    metrics = Metrics() if admin else None
    busy_ms = int(server.busy_timeout_seconds * 1000)
    db = Database(server.database, reactor, readers=server.readers, busy_timeout_ms=busy_ms)
    notifier = ChangeNotifier(reactor)
    store = MeteredDatabase(db, metrics) if metrics else db
    streams = Streams(store, notifier)
    events = Events(store, notifier)
    served = MeteredEvents(events, metrics) if metrics else events
    authenticator = Authenticator(
        config.clients,
        operations=[op.name for op in OPERATIONS],
        in_thread=lambda fn, *args: deferToThreadPool(reactor, reactor.getThreadPool(), fn, *args),
    )
    dispatcher = Dispatcher(streams, served, authenticator, reactor, server.max_page)
    if metrics:
        dispatcher = MeteredDispatcher(dispatcher, metrics)
    limits = Limits(
        max_line_bytes=server.max_line_bytes,
        max_pending_requests=server.max_pending_requests,
        max_pending_bytes=server.max_pending_bytes,
        idle_timeout_seconds=server.idle_timeout_seconds,
        max_connections=server.max_connections,
    )
    throttle = FailureThrottle(reactor, cap=server.auth_failure_max_delay_seconds)
    factory = BusFactory(dispatcher, limits, reactor, throttle)
    db.setServiceParent(top)
    if db.dialect == "postgresql":
        # Several nodes may share the database: their changes wake our polls.
        from eventbus.storage.pg_listen import PgListener

        PgListener(server.database, notifier, reactor).setServiceParent(top)
    Housekeeping(
        db, notifier, reactor, server.retention_seconds, server.housekeeping_interval_seconds
    ).setServiceParent(top)
    Connections(factory, events, reactor).setServiceParent(top)
    listener = StreamServerEndpointService(endpoints.serverFromString(reactor, server.listen), factory)
    listener._raiseSynchronously = True  # a port in use stops start-up loudly
    listener.setServiceParent(top)
    if admin and metrics:
        AdminService(admin, metrics, db, factory, notifier, reactor).setServiceParent(top)
    top.database = db  # type: ignore[attr-defined]
    top.factory = factory  # type: ignore[attr-defined]
    return top



