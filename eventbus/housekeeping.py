"""Background upkeep: expired leases and retention, in small batches.

Each round ends expired leases (dead-lettering events that used up their
deliveries, and waking long polls that may now take them again) and deletes
events past their retention, a batch per writer transaction so writers never
wait long behind it. On PostgreSQL every node runs this; the statements are
safe to run concurrently (a row deleted or updated twice is simply skipped).
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import Service
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

from eventbus.clock import now_us
from eventbus.interfaces import IDatabase
from eventbus.notify import ChangeNotifier
from eventbus.storage import queries as q

BATCH = 500


class Housekeeping(Service):
    log = Logger()

    def __init__(
        self,
        db: IDatabase,
        notifier: ChangeNotifier,
        reactor: Any,
        retention_seconds: int,
        interval: float = 1.0,
    ) -> None:
        self.db = db
        self.notifier = notifier
        self.reactor = reactor
        self.retention_seconds = retention_seconds
        self.interval = interval
        self._loop: LoopingCall | None = None
        self._done: Deferred | None = None

    def startService(self) -> None:
        super().startService()
        self._loop = LoopingCall(self.round)
        self._loop.clock = self.reactor
        self._done = self._loop.start(self.interval, now=False)
        self._done.addErrback(lambda f: self.log.failure("housekeeping stopped", f))

    def stopService(self) -> Deferred | None:
        super().stopService()
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        return self._done

    @inlineCallbacks
    def round(self) -> Any:
        """One pass: leases first (they wake consumers), then retention."""
        try:
            while True:
                swept = yield self.db.write(q.sweep_leases_txn, now_us(self.reactor), BATCH)
                for name in swept.streams:
                    self.notifier.changed(name)
                if swept.count < BATCH:
                    break
            while self.running:
                purged = yield self.db.write(
                    q.purge_expired_txn, now_us(self.reactor), self.retention_seconds, BATCH
                )
                if purged < BATCH:
                    break
        except Exception:
            self.log.failure("housekeeping round failed; trying again next round")
