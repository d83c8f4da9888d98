"""Long-poll wake-ups with an injected clock: woken by change, timed out by
the clock, and nothing left behind by a waiter that went away."""

from __future__ import annotations

from twisted.internet.defer import CancelledError
from twisted.internet.task import Clock

from eventbus.notify import ChangeNotifier


def _result(d):  # type: ignore[no-untyped-def]
    out: list = []
    d.addBoth(out.append)
    return out


def test_change_wakes_waiter_before_timeout() -> None:
    clock = Clock()
    n = ChangeNotifier(clock)
    d = n.wait("s", n.version("s"), 30)
    got = _result(d)
    assert got == []
    clock.advance(5)
    n.changed("s")
    assert got == [True]
    assert n.waiting() == 0
    assert clock.getDelayedCalls() == []


def test_timeout_answers_false_and_forgets() -> None:
    clock = Clock()
    n = ChangeNotifier(clock)
    got = _result(n.wait("s", n.version("s"), 2))
    clock.advance(1.9)
    assert got == []
    clock.advance(0.2)
    assert got == [False]
    assert n.waiting() == 0


def test_change_between_read_and_wait_is_not_missed() -> None:
    n = ChangeNotifier(Clock())
    seen = n.version("s")
    n.changed("s")  # a write commits after the caller's query, before its wait
    assert _result(n.wait("s", seen, 30)) == [True]


def test_other_streams_do_not_wake() -> None:
    clock = Clock()
    n = ChangeNotifier(clock)
    got = _result(n.wait("a", n.version("a"), 30))
    n.changed("b")
    assert got == []
    n.changed("a")
    assert got == [True]


def test_cancelled_waiter_costs_nothing() -> None:
    clock = Clock()
    n = ChangeNotifier(clock)
    d = n.wait("s", n.version("s"), 30)
    got = _result(d)
    d.cancel()  # the client disconnected
    assert len(got) == 1 and got[0].check(CancelledError)
    assert n.waiting() == 0
    assert clock.getDelayedCalls() == []
    n.changed("s")  # nothing to wake, nothing raised


def test_wake_all_answers_every_waiter() -> None:
    n = ChangeNotifier(Clock())
    results = [_result(n.wait(name, 0, 30)) for name in ("a", "b", "b")]
    n.wake_all()
    assert results == [[True], [True], [True]]
    assert n.waiting() == 0
