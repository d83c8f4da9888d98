"""Hashed secrets are verified off the reactor thread, and the checks after
auth keep their order when they wait for it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock

from eventbus import secrets
from eventbus.auth import Authenticator, AuthMemo
from eventbus.config import ClientConfig
from eventbus.errors import BusError
from eventbus.operations import Dispatcher
from tests.busclient import DEFAULT_AUTH, LineClient
from tests.servers import ServerProcess

SECRET = "hashed-secret-for-threads"
HASH = secrets.hash_secret(SECRET, n=2**12)


class _Pool:
    """Stands in for the thread pool: records the work, runs it on demand."""

    def __init__(self) -> None:
        self.calls: list[tuple[Any, tuple, Deferred]] = []

    def __call__(self, fn: Any, *args: Any) -> Deferred:
        d: Deferred = Deferred()
        self.calls.append((fn, args, d))
        return d

    def run_all(self) -> None:
        calls, self.calls = self.calls, []
        for fn, args, d in calls:
            d.callback(fn(*args))


def _authenticator(pool: _Pool) -> Authenticator:
    return Authenticator((ClientConfig("h", "hid", HASH), ClientConfig("p", "pid", "plain")), in_thread=pool)


def test_scrypt_runs_in_the_pool_not_the_caller() -> None:
    pool = _Pool()
    auth = _authenticator(pool)
    d = auth.authenticate({"client_id": "hid", "client_secret": SECRET})
    assert isinstance(d, Deferred) and len(pool.calls) == 1 and not d.called
    pool.run_all()
    assert d.result.client_id == "hid"
    # Verified once: the next request is admitted at once, with no hashing.
    assert auth.authenticate({"client_id": "hid", "client_secret": SECRET}).client_id == "hid"
    assert pool.calls == []


@pytest.mark.parametrize("client_id", ["hid", "nobody"])
def test_wrong_or_unknown_fails_in_the_pool(client_id: str) -> None:
    pool = _Pool()
    auth = _authenticator(pool)
    d = auth.authenticate({"client_id": client_id, "client_secret": "wrong"})
    failures: list = []
    d.addErrback(failures.append)
    assert len(pool.calls) == 1 and failures == []
    pool.run_all()
    assert failures[0].check(BusError) and failures[0].value.code == "unauthorized"


def test_plain_secrets_never_wait() -> None:
    pool = _Pool()
    assert (
        _authenticator(pool).authenticate({"client_id": "pid", "client_secret": "plain"}).client_id == "pid"
    )
    assert pool.calls == []


def test_dispatcher_keeps_the_order_of_checks_while_verifying() -> None:
    pool = _Pool()
    dispatcher = Dispatcher(None, None, _authenticator(pool), Clock())  # type: ignore[arg-type]
    line = b'{"operation": "create_stream", "auth": {"client_id": "hid", "client_secret": "%s"}}'
    right, wrong = line % SECRET.encode(), line % b"x"
    answers = [dispatcher.prepare(line).run() for line in (right, wrong)]
    assert all(isinstance(a, Deferred) and not a.called for a in answers)
    pool.run_all()
    assert b'"code":"missing_fields"' in answers[0].result  # auth passed; the body is checked next
    assert b'"code":"unauthorized"' in answers[1].result  # auth failed: the body is never looked at


def test_hashed_client_over_tcp(tmp_path: Path) -> None:
    auth = {"hashed": {"client_id": "hid", "client_secret": HASH}}
    server = ServerProcess(tmp_path, auth=auth).start()
    try:
        good = {"client_id": "hid", "client_secret": SECRET}
        with LineClient(server.port) as c:
            # Pipelined: the first request waits for the hash, the rest queue behind it.
            c.send({"operation": "create_stream", "auth": good, "body": {"stream_name": "h"}})
            c.send({"operation": "write_event", "auth": good, "body": {"stream_name": "h", "event": 1}})
            c.send({"operation": "get_stream_events", "auth": good, "body": {"stream_name": "h"}})
            c.send({"operation": "get_stream_info", "auth": {"client_id": "hid", "client_secret": "no"}})
            answers = [c.read() for _ in range(4)]
        assert [a["operation"] for a in answers] == [
            "create_stream",
            "write_event",
            "get_stream_events",
            "get_stream_info",
        ]
        assert [a["status"] for a in answers] == [True, True, True, False]
        assert [e["body"] for e in answers[2]["body"]["events"]] == [1]
        assert answers[3]["code"] == "unauthorized"
    finally:
        server.stop()


def test_one_verification_for_requests_waiting_on_the_same_secret() -> None:
    pool = _Pool()
    auth = _authenticator(pool)
    waiting = [auth.authenticate({"client_id": "hid", "client_secret": SECRET}) for _ in range(3)]
    assert len(pool.calls) == 1
    pool.run_all()
    assert [d.result.client_id for d in waiting] == ["hid"] * 3


def test_refusals_found_in_the_pool_are_slowed_down_too(tmp_path: Path) -> None:
    import time

    auth = {"hashed": {"client_id": "hid", "client_secret": HASH}}
    server = ServerProcess(tmp_path, auth=auth).start()
    try:
        bad = {"client_id": "hid", "client_secret": "guess"}
        with LineClient(server.port) as c:
            started = time.monotonic()
            for _ in range(5):
                assert c.request("list_streams", {}, auth=bad)["code"] == "unauthorized"
            elapsed = time.monotonic() - started
        # Three free failures, then 0.1 s and 0.2 s of held answers.
        assert elapsed >= 0.3
        assert "answer delayed" in server.log_text()
    finally:
        server.stop()


def test_a_connections_memo_spares_only_its_own_repeated_auth() -> None:
    """The same auth object again on a connection is the same client with no
    hashing; anything else (a wrong secret, another id, extra keys) is
    checked in full, and a refusal forgets nothing and admits nothing."""
    pool = _Pool()
    auth = _authenticator(pool)
    checked: list[Any] = []
    full = auth._authenticate

    def counted(presented: Any) -> Any:
        checked.append(presented)
        return full(presented)

    auth._authenticate = counted  # type: ignore[method-assign]
    memo = AuthMemo()
    good = {"client_id": "pid", "client_secret": "plain"}
    assert auth.authenticate(good, memo).client_id == "pid"
    assert auth.authenticate(dict(good), memo).client_id == "pid"
    assert checked == [good]
    for bad in ({"client_id": "pid", "client_secret": "plaiN"}, {"client_id": "pid"}, "pid:plain"):
        with pytest.raises(BusError):
            auth.authenticate(bad, memo)
    # Another client's id with the same secret: verified (in the pool), not the memo's client.
    assert isinstance(auth.authenticate({"client_id": "hid", "client_secret": "plain"}, memo), Deferred)
    assert auth.authenticate(dict(good), memo).client_id == "pid"
    assert len(checked) == 5
    extra = {**good, "note": "x" * 100}
    assert auth.authenticate(extra, memo).client_id == "pid"
    assert memo.auth == good  # what came with junk beside it is not kept
    other = AuthMemo()
    assert auth.authenticate(dict(good), other).client_id == "pid"
    assert len(checked) == 7  # each connection checks once for itself


def test_a_wrong_secret_after_a_right_one_on_one_connection_is_refused(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path).start()
    try:
        with LineClient(server.port) as c:
            assert c.request("list_streams", {})["status"] is True
            wrong = {
                "client_id": DEFAULT_AUTH["client_id"],
                "client_secret": DEFAULT_AUTH["client_secret"] + "x",
            }
            answer = c.request("list_streams", {}, auth=wrong)
            assert (answer["status"], answer["code"]) == (False, "unauthorized")
            assert c.request("list_streams", {})["status"] is True
    finally:
        server.stop()
