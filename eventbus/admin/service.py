"""The admin listener's services: the sampler and the HTTP listener.

The :class:`Sampler` wakes every few seconds, remembers the running totals
(for the status page's rate charts) and reads every stream's counts in one
read transaction (for the per-stream gauges and the page). Pages and scrapes
also ask it for figures at most a second old, so what they show follows the
traffic without each view costing a query: concurrent asks share one read.
"""

from __future__ import annotations

import time
import weakref
from collections import deque
from typing import Any

from twisted.application.service import MultiService, Service
from twisted.internet import endpoints
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.server import Site

from eventbus.clock import now_us
from eventbus.metrics import Metrics
from eventbus.storage.overview import Overview, stream_overview_txn

DEFAULT_INTERVAL = 5.0
DEFAULT_WINDOW = 15 * 60
MAX_STREAMS = 500


def admin_endpoint(spec: str) -> str:
    """The endpoint to listen on: a bare port, or a TCP endpoint without an
    ``interface``, binds the loopback interface only (opening the admin
    listener to the network is a deliberate ``interface=0.0.0.0``)."""
    spec = spec.strip()
    if spec.isdigit():
        return f"tcp:{spec}:interface=127.0.0.1"
    kind = spec.split(":", 1)[0].lower()
    if kind in ("tcp", "ssl") and "interface=" not in spec:
        return spec + ":interface=127.0.0.1"
    if kind == "tcp6" and "interface=" not in spec:
        return spec + r":interface=\:\:1"
    return spec


class Sampler(Service):
    log = Logger()

    def __init__(
        self,
        db: Any,
        metrics: Metrics,
        factory: Any,
        reactor: Any,
        interval: float = DEFAULT_INTERVAL,
        window: float = DEFAULT_WINDOW,
        max_streams: int = MAX_STREAMS,
    ) -> None:
        self.db = db
        self.metrics = metrics
        self.factory = factory
        self.reactor = reactor
        self.interval = interval
        self.max_streams = max_streams
        #: (time, totals) every ``interval`` seconds over ``window``.
        self.history: deque[tuple[float, dict[str, int]]] = deque(maxlen=int(window / interval) + 1)
        self.overview: Overview | None = None
        self.overview_at: float | None = None  # wall clock, for display
        self._overview_mono = 0.0
        self.error: str | None = None
        self.started_at = time.time()
        self._overview_stamp = -1
        self._reading: dict[int, list[Deferred]] = {}
        self._loop: LoopingCall | None = None
        self._seen: weakref.WeakKeyDictionary[Any, float] = weakref.WeakKeyDictionary()

    def startService(self) -> None:
        super().startService()
        self.started_at = time.time()
        self._loop = LoopingCall(self.tick)
        self._loop.clock = self.reactor
        self._loop.start(self.interval, now=True).addErrback(
            lambda f: self.log.failure("admin sampler stopped", f)
        )

    def stopService(self) -> None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()

    def tick(self) -> Deferred:
        self.history.append((time.time(), dict(self.metrics.totals)))
        self.connections()
        return self.refresh(max_age=0)

    def connections(self) -> list[tuple[str, float]]:
        """(peer address, connected since) of each open client connection;
        "since" is when the sampler first saw it (within ``interval``)."""
        now = time.time()
        out = []
        for conn in list(getattr(self.factory, "connections", ())):
            since = self._seen.setdefault(conn, now)
            peer = conn.transport.getPeer() if conn.transport is not None else None
            host, port = getattr(peer, "host", "?"), getattr(peer, "port", "")
            out.append((f"{host}:{port}" if port != "" else str(host), since))
        out.sort(key=lambda item: item[1])
        return out

    def refresh(self, max_age: float) -> Deferred:
        """Fires with the overview (None if it could never be read); never fails.

        The last one is reused while it is at most ``max_age`` seconds old and
        no request has been answered since it was read: so a page or scrape
        right after a client's write shows that write, and idle views cost
        nothing. Asks while a read of the same moment is running share it.
        """
        stamp = self.metrics.totals["requests"]
        age = time.monotonic() - self._overview_mono
        if self.overview is not None and stamp == self._overview_stamp and age <= max_age:
            return succeed(self.overview)
        d: Deferred = Deferred()
        waiters = self._reading.get(stamp)
        if waiters is not None:
            waiters.append(d)
            return d
        self._reading[stamp] = [d]
        read = self.db.read(stream_overview_txn, now_us(self.reactor), self.max_streams)
        read.addCallbacks(self._read, self._failed, callbackArgs=(stamp,), errbackArgs=(stamp,))
        return d

    def _read(self, overview: Overview, stamp: int) -> None:
        if stamp >= self._overview_stamp:  # reads may finish out of order
            self.overview = overview
            self._overview_stamp = stamp
            self._overview_mono = time.monotonic()
            self.overview_at = time.time()
            self.error = None
            self.metrics.set_streams(((s.name, s.counts) for s in overview.streams), self.overview_at)
        self._wake(stamp)

    def _failed(self, failure: Failure, stamp: int) -> None:
        self.error = failure.getErrorMessage()
        self.log.warn("admin: cannot read stream counts: {error}", error=self.error)
        self._wake(stamp)

    def _wake(self, stamp: int) -> None:
        for d in self._reading.pop(stamp, []):
            d.callback(self.overview)

    def rates(self, key: str) -> list[tuple[float, float]]:
        """(time, per-second rate of ``key``) between consecutive samples."""
        points = list(self.history)
        out = []
        for (t0, a), (t1, b) in zip(points, points[1:]):
            if t1 > t0:
                out.append((t1, max(0, b.get(key, 0) - a.get(key, 0)) / (t1 - t0)))
        return out


class _QuietSite(Site):
    """No access log: scrapes every few seconds would drown the server's log."""

    noisy = False

    def log(self, request: Any) -> None:
        pass


class AdminListener(Service):
    log = Logger()

    def __init__(self, endpoint: str, site: Site, reactor: Any) -> None:
        self.endpoint = endpoint
        self.site = site
        self.reactor = reactor
        self.port: Any = None

    def startService(self) -> None:
        super().startService()
        failures: list[Failure] = []
        d = endpoints.serverFromString(self.reactor, self.endpoint).listen(self.site)
        d.addCallbacks(self._listening, failures.append)
        if failures:  # a port in use stops start-up loudly, as the main listener does
            failures[0].raiseException()

    def _listening(self, port: Any) -> None:
        self.port = port
        address = port.getHost()
        host = getattr(address, "host", "")
        self.log.info(
            "admin listening on http://{host}:{port}/", host=host, port=getattr(address, "port", "")
        )

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self.port is not None:
            return self.port.stopListening()
        return None


class AdminService(MultiService):
    """The sampler and the HTTP listener (``--admin ENDPOINT``)."""

    def __init__(
        self,
        endpoint: str,
        metrics: Metrics,
        db: Any,
        factory: Any,
        notifier: Any,
        reactor: Any,
        interval: float = DEFAULT_INTERVAL,
    ) -> None:
        super().__init__()
        from eventbus.admin.resources import build_root

        self.metrics = metrics
        self.db = db
        self.factory = factory
        metrics.connections.set_function(lambda: len(factory.connections))
        metrics.in_flight.set_function(lambda: getattr(factory, "inflight", 0))
        if hasattr(notifier, "waiting"):
            metrics.long_polls.set_function(notifier.waiting)
        self.sampler = Sampler(db, metrics, factory, reactor, interval)
        self.sampler.setServiceParent(self)
        site = _QuietSite(build_root(self.sampler, metrics, db, reactor))
        self.listener = AdminListener(admin_endpoint(endpoint), site, reactor)
        self.listener.setServiceParent(self)

    def startService(self) -> None:
        # The database service started before us: its writer exists now.
        writer = getattr(self.db, "writer", None)
        if writer is not None:
            writer.on_batch = self.metrics.observe_batch
        super().startService()
