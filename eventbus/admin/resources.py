"""The admin listener's HTTP resources (twisted.web).

``/``             the status page (HTML, refreshes itself)
``/status.json``  the same figures for programs
``/metrics``      Prometheus text format
``/health``       200 when the database answers a query, 503 otherwise
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from eventbus.admin.page import render_page, snapshot
from eventbus.admin.service import Sampler
from eventbus.metrics import Metrics
from eventbus.storage.overview import ping_txn

#: Figures shown or scraped are re-read when older than this (seconds), or
#: when any request has been answered since they were read.
MAX_AGE = 5.0
HEALTH_TIMEOUT = 2.0

log = Logger(namespace="eventbus.admin")


def _answer(request: Request, d: Deferred, render: Any) -> int:
    """Finish ``request`` with ``render(result)`` when ``d`` fires, unless the
    client went away meanwhile."""
    gone: list[bool] = []
    request.notifyFinish().addErrback(lambda _: gone.append(True))

    def write(result: Any) -> None:
        if gone:
            return
        body = render(result)
        request.setHeader(b"content-length", str(len(body)).encode())
        request.write(body)
        request.finish()

    def failed(failure: Failure) -> None:
        log.failure("admin request failed", failure)
        if not gone:
            request.setResponseCode(500)
            request.finish()

    d.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


class MetricsResource(Resource):
    isLeaf = True

    def __init__(self, sampler: Sampler, metrics: Metrics) -> None:
        super().__init__()
        self.sampler = sampler
        self.metrics = metrics

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode())
        request.setHeader(b"cache-control", b"no-store")
        return _answer(request, self.sampler.refresh(MAX_AGE), lambda _: self.metrics.exposition())


class HealthResource(Resource):
    isLeaf = True

    def __init__(self, db: Any, reactor: Any) -> None:
        super().__init__()
        self.db = db
        self.reactor = reactor

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        started = time.monotonic()
        # Through the writer: the one path every write takes must be alive
        # (its thread running, the write lock obtainable), not just a reader.
        d = self.db.write(ping_txn)
        timer = self.reactor.callLater(HEALTH_TIMEOUT, d.cancel)

        def ok(_: Any) -> dict[str, Any]:
            return {"status": "ok", "database_ms": round((time.monotonic() - started) * 1000, 2)}

        def down(failure: Failure) -> dict[str, Any]:
            request.setResponseCode(503)
            reason = "timed out" if timer.called else failure.getErrorMessage()
            return {"status": "unavailable", "reason": f"database: {reason}"}

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(stop_timer).addCallbacks(ok, down)
        return _answer(request, d, orjson.dumps)

    render_HEAD = render_GET


class StatusJSON(Resource):
    isLeaf = True

    def __init__(self, sampler: Sampler) -> None:
        super().__init__()
        self.sampler = sampler

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"application/json")
        request.setHeader(b"cache-control", b"no-store")
        return _answer(request, self.sampler.refresh(MAX_AGE), lambda _: orjson.dumps(snapshot(self.sampler)))


class StatusPage(Resource):
    isLeaf = True

    def __init__(self, sampler: Sampler) -> None:
        super().__init__()
        self.sampler = sampler

    def render_GET(self, request: Request) -> int:
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        return _answer(request, self.sampler.refresh(MAX_AGE), lambda _: render_page(self.sampler))


class _Root(Resource):
    def __init__(self, page: StatusPage) -> None:
        super().__init__()
        self.page = page

    def getChild(self, path: bytes, request: Request) -> Resource:
        if path == b"":
            return self.page
        return super().getChild(path, request)


def build_root(sampler: Sampler, metrics: Metrics, db: Any, reactor: Any) -> Resource:
    root = _Root(StatusPage(sampler))
    root.putChild(b"metrics", MetricsResource(sampler, metrics))
    root.putChild(b"health", HealthResource(db, reactor))
    root.putChild(b"status.json", StatusJSON(sampler))
    return root
