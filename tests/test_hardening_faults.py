"""Faults on a real server: a full disk, I/O errors, a database locked by
another process, kill -9 and SIGTERM under concurrent writes.

Storage failures answer ``unavailable``, acknowledge nothing that was not
committed, leave the server running, and pass by themselves. Crashes lose no
acknowledged event and duplicate none.
"""

from __future__ import annotations

import errno
import os
import resource
import sqlite3
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.busclient import DEFAULT_AUTH, LineClient
from tests.hardening_support import check_response, wait_for
from tests.servers import ServerProcess

#: More rounds for the manual procedure (docs/crash-testing.rst).
CRASH_ROUNDS = int(os.environ.get("EVENTBUS_CRASH_ROUNDS", "3"))


def db_file(server: ServerProcess) -> str:
    return server.database.removeprefix("sqlite:///")


def all_events(port: int, stream: str) -> list[dict[str, Any]]:
    """Every event of a stream, paging through."""
    out: list[dict[str, Any]] = []
    after = None
    with LineClient(port, timeout=30) as c:
        for _ in range(10_000):
            body: dict[str, Any] = {"stream_name": stream, "limit": 5000}
            if after is not None:
                body["after_seq"] = after
            page = c.call("get_stream_events", body)
            out += page["events"]
            after = page["next_after_seq"]
            if after is None:
                return out
    raise AssertionError("paging did not end")


def integrity_ok(path: str) -> None:
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


def stopped(server: ServerProcess) -> None:
    """SIGTERM, and a graceful stop (twistd then ends by that same signal)."""
    assert server.terminate(timeout=30) in (0, -15)
    assert server.log_text().rstrip().endswith("Server Shut Down.")


def write(c: LineClient, stream: str, event: Any) -> dict[str, Any]:
    response = c.request("write_event", {"stream_name": stream, "event": event})
    check_response(response)
    return response


# -- disk full --------------------------------------------------------------------------


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 3 MiB tmpfs, mounted for this test (needs root)."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, text=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs to fill up: {done.stderr.strip() or done.returncode}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(directory: Path) -> Path:
    """Fill the filesystem of ``directory`` to the last byte."""
    filler = directory / "filler"
    chunk = b"\0" * 65536
    with open(filler, "wb", buffering=0) as f:
        while True:
            try:
                f.write(chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC
                if len(chunk) == 1:
                    break
                chunk = chunk[: len(chunk) // 2]
    return filler


def test_disk_full_answers_unavailable_and_recovers(tmp_path: Path, small_fs: Path) -> None:
    server = ServerProcess(tmp_path / "srv", database=f"sqlite:///{small_fs / 'eventbus.db'}").start()
    try:
        acked: list[str] = []
        refused = 0
        with LineClient(server.port, timeout=30) as c:
            c.call("create_stream", {"stream_name": "full"})
            for n in range(5):
                acked.append(write(c, "full", {"n": n})["body"]["event"]["id"])
            filler = fill(small_fs)
            big = "x" * 300_000  # more than any free page the database still has
            for n in range(20):
                response = write(c, "full", {"big": n, "pad": big})
                if response["status"]:
                    acked.append(response["body"]["event"]["id"])
                else:
                    assert response["code"] == "unavailable"
                    refused += 1
                    if refused >= 3:
                        break
            assert refused >= 1, "the disk never filled up"
            # Still running: health, and reads that show exactly what was acknowledged.
            assert c.request("health", auth=None)["status"] is True
            assert [e["id"] for e in all_events(server.port, "full")] == acked
            # The cause goes away; the server recovers by itself.
            filler.unlink()
            recovered = wait_for(lambda: write(c, "full", {"after": 1})["status"], timeout=15, interval=0.2)
            assert recovered
        events = all_events(server.port, "full")
        ids = [e["id"] for e in events]
        assert ids[: len(acked)] == acked and len(set(ids)) == len(ids)
        stopped(server)
        integrity_ok(db_file(server))
        assert "x" * 1000 not in server.log_text()  # failures logged without event bodies
    finally:
        server.stop()


# -- I/O error ----------------------------------------------------------------------------


def test_io_error_answers_unavailable_and_recovers(tmp_path: Path) -> None:
    """A real write error: the writer process may not grow files past a size
    limit (RLIMIT_FSIZE, set from outside), so SQLite's writes fail with
    EFBIG, which it reports as a disk I/O error."""
    server = ServerProcess(tmp_path / "srv").start()
    pid = server.writer_pid()
    try:
        with LineClient(server.port, timeout=30) as c:
            c.call("create_stream", {"stream_name": "io"})
            acked = [write(c, "io", {"n": n})["body"]["event"]["id"] for n in range(5)]
            files = [db_file(server), db_file(server) + "-wal", server.log_path]
            biggest = max(os.path.getsize(f) for f in files if os.path.exists(f))
            limit = biggest + 256 * 1024
            # The soft limit only: the hard one stays, so it can be raised again.
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            try:
                response = write(c, "io", {"pad": "y" * 600_000})
                assert response["status"] is False and response["code"] == "unavailable", response
                assert c.request("health", auth=None)["status"] is True
                assert [e["id"] for e in all_events(server.port, "io")] == acked
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            recovered = wait_for(lambda: write(c, "io", {"after": 1})["status"], timeout=15, interval=0.2)
            assert recovered
        ids = [e["id"] for e in all_events(server.port, "io")]
        assert ids[:5] == acked and len(ids) == 6
        stopped(server)
        integrity_ok(db_file(server))
        assert "disk I/O error" in server.log_text() or "database or disk is full" in server.log_text()
    finally:
        server.stop()


def test_a_failing_database_fails_a_whole_batch_at_once(tmp_path: Path) -> None:
    """Writes queued behind a lock, then run in one group commit that cannot
    commit (the file size limit): all answered unavailable, and the failure
    logged once for the batch, not retried and logged once per write."""
    server = ServerProcess(tmp_path / "srv", server={"busy_timeout_seconds": 20}).start()
    pid = server.writer_pid()
    count = 60
    try:
        with LineClient(server.port, timeout=30) as c:
            c.call("create_stream", {"stream_name": "batch"})
            for n in range(3):
                write(c, "batch", n)
            other = sqlite3.connect(db_file(server), timeout=10, isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")
            files = [db_file(server), db_file(server) + "-wal", server.log_path]
            limit = max(os.path.getsize(f) for f in files if os.path.exists(f)) + 64 * 1024
            resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
            try:
                for n in range(count):
                    c.send(
                        {
                            "operation": "write_event",
                            "auth": DEFAULT_AUTH,
                            "body": {"stream_name": "batch", "event": {"n": n, "pad": "w" * 4000}},
                        }
                    )
                time.sleep(1.0)  # all read and queued behind the lock
                other.rollback()
                other.close()
                answers = [c.read() for _ in range(count)]
            finally:
                resource.prlimit(pid, resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
            refused = [a for a in answers if not a["status"]]
            assert all(a["code"] == "unavailable" for a in refused)
            assert len(refused) >= 10
            assert wait_for(lambda: write(c, "batch", "after")["status"], timeout=15, interval=0.2)
        logged = server.log_text().count("write transaction failed")
        assert 1 <= logged <= 5, f"{logged} failures logged for {len(refused)} refused writes"
    finally:
        server.stop()


# -- locked by another process -----------------------------------------------------------------


def test_database_locked_by_another_process(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "srv", server={"busy_timeout_seconds": 0.3}).start()
    try:
        with LineClient(server.port, timeout=30) as c:
            c.call("create_stream", {"stream_name": "locked"})
            acked = [write(c, "locked", n)["body"]["event"]["id"] for n in range(3)]
            other = sqlite3.connect(db_file(server), timeout=10, isolation_level=None)
            other.execute("BEGIN EXCLUSIVE")
            try:
                # Many writes at once, while the lock is held past the busy
                # timeout: every one answered unavailable, soon (not a busy
                # timeout per write), nothing written.
                count = 50
                c.sock.settimeout(10)
                lines = [
                    {
                        "operation": "write_event",
                        "auth": DEFAULT_AUTH,
                        "body": {"stream_name": "locked", "event": n},
                    }
                    for n in range(count)
                ]
                for req in lines:
                    c.send(req)
                answers = [c.read() for _ in range(count)]
                assert [a["code"] for a in answers] == ["unavailable"] * count
                # Reads go on meanwhile (WAL), and show nothing new.
                assert [e["id"] for e in all_events(server.port, "locked")] == acked
                assert c.request("health", auth=None)["status"] is True
            finally:
                other.rollback()
                other.close()
            assert wait_for(lambda: write(c, "locked", "after")["status"], timeout=15, interval=0.2)
        assert len(all_events(server.port, "locked")) == 4
    finally:
        server.stop()


# -- crashes under load ------------------------------------------------------------------------


class Writers:
    """Threads, each on its own connection, pipelining writes of unique
    events and recording the ones acknowledged, until the connection ends."""

    def __init__(self, port: int, stream: str, threads: int = 4, window: int = 16) -> None:
        self.port = port
        self.stream = stream
        self.window = window
        self.acked: set[str] = set()
        self.answers = 0
        self.bad: list[Any] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(threads)]

    def start(self) -> Writers:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 30) -> None:
        for t in self._threads:
            t.join(timeout)
            assert not t.is_alive()

    def _run(self, worker: int) -> None:
        tag = f"{os.getpid()}-{time.monotonic_ns()}-{worker}"
        sent: list[str] = []
        try:
            with LineClient(self.port, timeout=30) as c:
                n = 0
                while True:
                    while not self._stop.is_set() and len(sent) < self.window:
                        key = f"{tag}-{n}"
                        n += 1
                        c.send(
                            {
                                "operation": "write_event",
                                "auth": DEFAULT_AUTH,
                                "body": {"stream_name": self.stream, "event": {"k": key}},
                            }
                        )
                        sent.append(key)
                    if not sent:
                        return
                    response = c.read()
                    key = sent.pop(0)
                    with self._lock:
                        self.answers += 1
                        if response.get("status") is True:
                            if response["body"]["event"]["body"] != {"k": key}:
                                self.bad.append(("out of order", key, response))
                            self.acked.add(key)
                        elif response.get("code") != "unavailable":
                            self.bad.append(("unexpected", key, response))
        except (ConnectionError, OSError):
            return  # the server went away (kill -9) or closed after SIGTERM


def keys(port: int, stream: str) -> list[str]:
    return [e["body"]["k"] for e in all_events(port, stream)]


def test_kill_9_under_write_load_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "srv")
    acked: set[str] = set()
    try:
        for round_ in range(CRASH_ROUNDS):
            server.start()
            if round_ == 0:
                with LineClient(server.port) as c:
                    c.call("create_stream", {"stream_name": "crash"})
            writers = Writers(server.port, "crash").start()
            assert wait_for(lambda w=writers: w.answers >= 500, timeout=30)
            server.kill()  # SIGKILL, mid-write
            writers.join()
            assert not writers.bad, writers.bad[:3]
            acked |= writers.acked
            integrity_ok(db_file(server))
        server.start()
        stored = keys(server.port, "crash")
        assert len(stored) == len(set(stored)), "an event was stored twice"
        missing = acked - set(stored)
        assert not missing, f"{len(missing)} acknowledged events lost"
        assert len(acked) >= 400 * CRASH_ROUNDS
    finally:
        server.stop()


def test_sigterm_under_write_load_answers_in_flight_then_exits(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "srv").start()
    try:
        with LineClient(server.port) as c:
            c.call("create_stream", {"stream_name": "term"})
            c.call("create_stream", {"stream_name": "term-quiet"})
        poll = LineClient(server.port, timeout=30)
        poll.send(
            {
                "operation": "process_events",
                "auth": DEFAULT_AUTH,
                "body": {"stream_name": "term-quiet", "wait_seconds": 30},
            }
        )
        writers = Writers(server.port, "term").start()
        assert wait_for(lambda: writers.answers >= 500, timeout=30)
        stopped(server)
        writers.join()
        assert not writers.bad, writers.bad[:3]
        # The long poll held at the time was answered before the close.
        assert poll.read()["operation"] == "process_events"
        assert poll.is_closed()
        poll.close()
        log = server.log_text()
        assert "shutdown: all requests answered" in log and "gave up" not in log
        server.start()
        stored = keys(server.port, "term")
        assert len(stored) == len(set(stored))
        assert writers.acked <= set(stored)
        integrity_ok(db_file(server))
    finally:
        server.stop()
