"""Wake-ups for long polls: a change counter and waiters per stream.

A long poll reads the stream's counter, queries, and if it found nothing
waits for the counter to move past what it read, so a write that commits
between the query and the wait is never missed. Writers bump the counter
after their commit. Waits are cancellable: a client that goes away leaves
nothing behind.

With several servers on one PostgreSQL database, a listener
(:mod:`eventbus.storage.pg_listen`) feeds other nodes' changes in through
:meth:`ChangeNotifier.changed`, and :meth:`ChangeNotifier.changed_all` when it
may have missed some.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, succeed


class ChangeNotifier:
    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._versions: dict[str, int] = {}
        self._waiters: dict[str, set[Deferred]] = {}
        self._stopping = False
        # Moves every stream's version at once (changed_all); both only grow,
        # so their sum changes whenever either does.
        self._epoch = 0

    def version(self, stream: str) -> int:
        return self._epoch + self._versions.get(stream, 0)

    def changed(self, stream: str) -> None:
        """Something in ``stream`` changed: wake everyone waiting on it."""
        self._versions[stream] = self._versions.get(stream, 0) + 1
        waiters = self._waiters.pop(stream, None)
        if waiters:
            for d in waiters:
                d.callback(True)

    def wait(self, stream: str, since: int, timeout: float) -> Deferred:
        """Fires True once ``stream`` changed after ``since``, or False on timeout
        (at once when shutting down)."""
        if self._stopping:
            return succeed(False)
        if self.version(stream) != since:
            return succeed(True)

        def forget() -> None:
            current = self._waiters.get(stream)
            if current is not None:
                current.discard(d)
                if not current:
                    del self._waiters[stream]

        def time_out() -> None:
            forget()
            d.callback(False)

        def stop_timer(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        d: Deferred = Deferred(lambda _: forget())
        self._waiters.setdefault(stream, set()).add(d)
        timer = self._reactor.callLater(timeout, time_out)
        d.addBoth(stop_timer)
        return d

    def changed_all(self) -> None:
        """Any stream may have changed (changes from other nodes may have been
        missed): every long poll, waiting or about to, looks again."""
        self._epoch += 1
        waiters, self._waiters = self._waiters, {}
        for ds in waiters.values():
            for d in ds:
                d.callback(True)

    def wake_all(self) -> None:
        """Shutting down: answer every long poll now. A woken poll looks once
        more and would wait again: from now on every wait ends at once."""
        self._stopping = True
        for stream in list(self._waiters):
            self.changed(stream)

    def waiting(self) -> int:
        return sum(len(w) for w in self._waiters.values())
