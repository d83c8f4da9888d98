"""The SQLite writer process of a real server: it runs every write, big
frames cross whole, it is replaced when it dies (the writes it held, of
unknown outcome, left unanswered), and it never outlives the server (a
graceful stop or kill -9). And, on a Clock, how the server's end waits for
a lone write's answer.
"""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from twisted.internet.task import Clock

from eventbus import errors
from eventbus.records import Event, Stream, WriteAnswer, Written
from eventbus.responses import write_event_answer
from eventbus.storage import migrate
from eventbus.storage import queries as q
from eventbus.storage.writer_process import (
    ANSWER_SPIN_SECONDS,
    CHILD_FD,
    MAX_BATCH,
    ProcessWriter,
    _answer,
    _jobs_frame,
    _read_frame,
    _received,
)
from tests.busclient import DEFAULT_AUTH, LineClient
from tests.hardening_support import wait_for
from tests.servers import ServerProcess, alive, children
from tests.test_hardening_faults import all_events


def test_results_and_refusals_cross_a_pickle_whole() -> None:
    """What the writer process sends back: records keep their type and
    fields, refusals their code, reason and context."""
    event = Event(7, "0190b1a2-0000-7000-8000-000000000007", "sid", 0, 123, '{"a":1}', 2, "lease", 456)
    written = Written([event], True)
    again = pickle.loads(pickle.dumps(written, protocol=pickle.HIGHEST_PROTOCOL))
    assert again == written and type(again) is Written and type(again.events[0]) is Event
    assert again.events[0].lease_expires == 456 and again.duplicate is True
    error = errors.missing_fields([{"name": "stream_name"}])
    back = pickle.loads(pickle.dumps(error))
    assert (back.code, back.reason, back.context) == (error.code, error.reason, error.context)


def test_answers_cross_as_plain_tuples_and_arrive_as_answers() -> None:
    """A WriteAnswer crosses as a plain tuple and is a WriteAnswer again on
    the server's side; other results keep their type; a plain tuple, which
    no write returns, would be taken for an answer, so it is refused."""
    answer = WriteAnswer(b'{"operation":"write_event"}\n', 1, False)
    stream = Stream(1, "sid", "s", 5, None, None)
    refusal = errors.stream_not_found("gone")
    frame = _answer([answer, stream, refusal, None, (b"not an answer", 1, False)], 0.25)
    crossed, seconds = pickle.loads(frame[4:])
    assert type(crossed[0]) is tuple  # plain data across
    results = _received(crossed)
    assert type(results[0]) is WriteAnswer and results[0] == answer
    assert type(results[1]) is Stream and results[1] == stream
    assert isinstance(results[2], errors.BusError) and results[2].code == "stream_not_found"
    assert results[3] is None and seconds == 0.25
    assert isinstance(results[4], errors.BusError) and results[4].code == "unavailable"


def test_a_commit_of_unknown_outcome_crosses_as_such() -> None:
    """A batch whose commit may or may not have happened comes back as that
    (its connections are then closed unanswered), not as ``unavailable``;
    any other failure does come back as ``unavailable``."""
    from twisted.python.failure import Failure

    unknown = Failure(errors.OutcomeUnknown("the connection broke during the commit"))
    crossed, _seconds = pickle.loads(_answer([unknown, Failure(ValueError("bug"))], 0.1)[4:])
    arrived, other = _received(crossed)
    assert isinstance(arrived, Failure) and arrived.check(errors.OutcomeUnknown)
    assert isinstance(other, errors.BusError) and other.code == "unavailable"


def test_only_module_level_functions_cross_by_name() -> None:
    """Jobs cross by their functions' names; a function the child could not
    find by its name is refused on the server's side, before it is sent."""

    def local(conn: Any) -> None:
        return None

    for fn in (local, lambda conn: None):
        with pytest.raises(ValueError, match="module-level"):
            _jobs_frame([(fn, (), None)])
    (job,) = pickle.loads(_jobs_frame([(q.write_events_txn, ("s", [], 1, None), write_event_answer)])[4:])
    assert job == (
        "eventbus.storage.queries:write_events_txn",
        ("s", [], 1, None),
        "eventbus.responses:write_event_answer",
    )


def _child(tmp_path: Path) -> tuple[subprocess.Popen, socket.socket]:
    """A writer process on a new database, and our end of its socket pair."""
    url = f"sqlite:///{tmp_path / 'child.db'}"
    migrate.upgrade(url)
    ours, theirs = socket.socketpair()
    child = subprocess.Popen(
        [sys.executable, "-m", "eventbus.storage.writer_process", url, "5000"],
        # Its end of the pair as fd 3, as the server gives it (kept open by pass_fds).
        preexec_fn=lambda: os.dup2(theirs.fileno(), CHILD_FD),
        pass_fds=(CHILD_FD,),
    )
    theirs.close()
    return child, ours


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc (Linux)")
def test_the_child_looks_for_close_writes_then_sleeps(tmp_path: Path) -> None:
    """Writes one after another keep the child looking for the next frame
    instead of sleeping (each is taken and answered, in order); once they
    stop it sleeps: a second without writes costs it next to no CPU."""
    child, ours = _child(tmp_path)
    try:
        with ours.makefile("rb") as source:
            ours.sendall(_jobs_frame([(q.create_stream_txn, ("r", 1), None)]))
            _read_frame(source)
            for n in range(50):
                ours.sendall(_jobs_frame([(q.write_events_txn, ("r", [f'{{"n":{n}}}'], 2, None), None)]))
                (written,), _seconds = _read_frame(source)
                assert type(written) is Written and written.events[0].body == f'{{"n":{n}}}'
            assert written.events[0].seq == 50
            before = _cpu_seconds(child.pid)
            time.sleep(1.0)
            idle = _cpu_seconds(child.pid) - before
    finally:
        ours.close()
        child.wait(30)
    assert idle < 0.2, f"the child used {idle:.2f} s of CPU in a second without writes"


def _writer_on_a_clock() -> tuple[ProcessWriter, Clock, list[bytes], list[Any]]:
    """A ProcessWriter on a Clock, its child a stand-in that keeps the
    frames sent to it; and the replies its jobs got."""
    clock = Clock()
    writer = ProcessWriter("sqlite:///unused.db", clock, 5000)
    frames: list[bytes] = []
    writer._child = SimpleNamespace(channel=SimpleNamespace(send=frames.append))  # type: ignore[assignment]
    return writer, clock, frames, []


def _turn(clock: Clock) -> int:
    """One turn of the reactor: the calls due now run (not those they add,
    which the next turn runs); how many ran."""
    due = [call for call in clock.getDelayedCalls() if call.getTime() <= clock.seconds()]
    for call in due:
        clock.calls.remove(call)
        call.called = 1
        call.func(*call.args, **call.kw)
    return len(due)


def _write(writer: ProcessWriter, replies: list[Any], n: int) -> None:
    writer.submit_then(q.write_events_txn, ("s", [f'{{"n":{n}}}'], 1, None), replies.append)


def test_the_reactor_looks_for_a_lone_writes_answer_until_it_comes() -> None:
    """A batch of one write: every turn of the reactor after it is sent has
    a call due at once (so the reactor polls without sleeping) until the
    answer is in; then none is left."""
    writer, clock, frames, replies = _writer_on_a_clock()
    _write(writer, replies, 1)
    assert _turn(clock) == 1 and len(frames) == 1  # sent at the end of the turn
    for _ in range(5):
        assert _turn(clock) == 1  # looked, and will look again
    writer._results(([None], 0.001))
    assert replies == [None]
    assert _turn(clock) == 1  # the look that finds the answer in
    assert clock.getDelayedCalls() == []


def test_the_reactor_stops_looking_after_its_time() -> None:
    """An answer slower than ANSWER_SPIN_SECONDS is waited for asleep."""
    writer, clock, frames, replies = _writer_on_a_clock()
    _write(writer, replies, 1)
    _turn(clock)
    assert _turn(clock) == 1
    clock.rightNow += ANSWER_SPIN_SECONDS * 1.01
    assert _turn(clock) == 1
    assert clock.getDelayedCalls() == [] and len(frames) == 1 and replies == []


def test_the_reactor_does_not_look_for_a_batch_of_several() -> None:
    """Writes that arrive together go as one batch, and the reactor, with
    their clients to serve, sleeps until the answer comes."""
    writer, clock, frames, replies = _writer_on_a_clock()
    _write(writer, replies, 1)
    _write(writer, replies, 2)
    assert _turn(clock) == 1 and len(frames) == 1
    assert len(pickle.loads(frames[0][4:])) == 2
    assert clock.getDelayedCalls() == []


def test_the_child_renders_what_it_committed(tmp_path: Path) -> None:
    """The child itself, fed a frame through its socket: it runs the jobs
    as one transaction, then each job's ``render`` on its result (a write
    comes back as its answer line). A render that fails is answered
    ``unavailable`` as stored, and costs the other jobs nothing."""
    child, ours = _child(tmp_path)
    try:
        jobs = [
            (q.create_stream_txn, ("r", 1), None),
            (q.write_events_txn, ("r", ['{"n":1}'], 2, None), write_event_answer),
            (q.create_stream_txn, ("s", 3), write_event_answer),  # a Stream: its render fails
            (q.write_events_txn, ("r", ['{"n":2}'], 4, None), None),
            (q.write_events_txn, ("missing", ['{"n":3}'], 5, None), write_event_answer),
        ]
        ours.sendall(_jobs_frame(jobs))
        with ours.makefile("rb") as source:
            crossed, _seconds = _read_frame(source)
        results = _received(crossed)
    finally:
        ours.close()
        child.wait(30)
    stream, answer, failed, written, refused = results
    assert type(stream) is Stream and stream.name == "r"
    assert type(written) is Written and written.events[0].body == '{"n":2}'
    first = written.events[0]
    assert type(answer) is WriteAnswer and (answer.count, answer.duplicate) == (1, False)
    line = json.loads(answer.line)
    assert (line["operation"], line["status"]) == ("write_event", True)
    event = line["body"]["event"]
    assert (event["body"], event["seq"], event["stream_id"]) == ({"n": 1}, first.seq - 1, first.stream_id)
    assert isinstance(failed, errors.BusError) and failed.code == "unavailable"
    assert "stored" in failed.reason
    assert isinstance(refused, errors.BusError) and refused.code == "stream_not_found"
    assert child.returncode == 0  # it ends when our end closes


@pytest.fixture
def sqlite_server(tmp_path: Path) -> Any:
    server = ServerProcess(tmp_path).start()
    yield server
    server.stop()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads CPU time from /proc (Linux)")
def test_the_server_sleeps_once_lone_writes_stop(sqlite_server: ServerProcess) -> None:
    """Lone writes, one after another, each answered; then a second without
    writes costs the server (and its writer process) next to no CPU: the
    reactor looked for each answer only while it was due."""
    server_pid = sqlite_server.proc.pid  # type: ignore[union-attr]
    with LineClient(sqlite_server.port) as c:
        c.call("create_stream", {"stream_name": "lone"})
        for n in range(50):
            assert c.call("write_event", {"stream_name": "lone", "event": {"n": n}})["event"]["body"] == {
                "n": n
            }
        time.sleep(0.2)  # the last looks end
        pids = (server_pid, sqlite_server.writer_pid())
        before = sum(_cpu_seconds(pid) for pid in pids)
        time.sleep(1.0)
        idle = sum(_cpu_seconds(pid) for pid in pids) - before
    assert idle < 0.2, f"the server used {idle:.2f} s of CPU in a second without writes"


def test_writes_run_in_the_writer_process(sqlite_server: ServerProcess) -> None:
    """The child holds the database's writer connection: while it is
    stopped (SIGSTOP), a write waits; once it runs again, the write is done."""
    child = sqlite_server.writer_pid()
    with LineClient(sqlite_server.port) as c:
        c.call("create_stream", {"stream_name": "w"})
        os.kill(child, signal.SIGSTOP)
        try:
            body = {"stream_name": "w", "event": {"n": 1}}
            c.send({"operation": "write_event", "auth": DEFAULT_AUTH, "body": body})
            c.sock.settimeout(0.5)
            with pytest.raises(TimeoutError):
                c.read_line()
        finally:
            os.kill(child, signal.SIGCONT)
        c.sock.settimeout(30)
        assert c.read()["status"] is True
        assert c.call("get_stream_info", {"stream_name": "w"})["stats"]["unprocessed"] == 1


def test_a_batch_bigger_than_one_read_crosses_whole(tmp_path: Path) -> None:
    """Jobs and results of several megabytes go out and come back in many
    sends and reads and are reassembled: every event, in order, intact."""
    bodies = [{"n": i, "pad": "x" * 4000} for i in range(1000)]
    server = ServerProcess(tmp_path, server={"max_line_bytes": 8 * 1024 * 1024}).start()
    try:
        with LineClient(server.port, timeout=60) as c:
            c.call("create_stream", {"stream_name": "big"})
            written = c.call("write_events", {"stream_name": "big", "events": bodies})["events"]
            assert [e["body"] for e in written] == bodies
            seqs = [e["seq"] for e in written]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(bodies)
        assert [e["body"] for e in all_events(server.port, "big")] == bodies
    finally:
        server.stop()


def test_more_writes_than_one_batch_holds_are_all_answered_in_order(sqlite_server: ServerProcess) -> None:
    """1,600 writes queued while the writer is stopped (SIGSTOP), from 4
    connections, more than three batches' worth: once it runs again each
    batch's results send the next, with no new request to set it off;
    every write is answered, in order, and stored once."""
    per_connection = 400
    assert 4 * per_connection > 3 * MAX_BATCH
    child = sqlite_server.writer_pid()
    clients = [LineClient(sqlite_server.port, timeout=60) for _ in range(4)]
    try:
        clients[0].call("create_stream", {"stream_name": "many"})
        os.kill(child, signal.SIGSTOP)
        try:
            for k, c in enumerate(clients):
                c.send_raw(
                    b"".join(
                        json.dumps(
                            {
                                "operation": "write_event",
                                "auth": DEFAULT_AUTH,
                                "body": {"stream_name": "many", "event": {"k": k, "n": n}},
                            }
                        ).encode()
                        + b"\n"
                        for n in range(per_connection)
                    )
                )
            time.sleep(1.0)  # all read and queued behind the stopped writer
        finally:
            os.kill(child, signal.SIGCONT)
        for k, c in enumerate(clients):
            answers = [c.read() for _ in range(per_connection)]
            assert all(a["status"] for a in answers)
            assert [a["body"]["event"]["body"] for a in answers] == [
                {"k": k, "n": n} for n in range(per_connection)
            ]
    finally:
        for c in clients:
            c.close()
    stored = [(e["body"]["k"], e["body"]["n"]) for e in all_events(sqlite_server.port, "many")]
    assert sorted(stored) == [(k, n) for k in range(4) for n in range(per_connection)]


def test_a_writer_process_that_dies_is_replaced(sqlite_server: ServerProcess) -> None:
    """kill -9 of the child under concurrent writes: every write is
    answered (ok, or unavailable while no child runs) or, if the child held
    it, its connection is closed unanswered (its outcome unknown); every
    acknowledged one is stored, the server stays up and a new child takes
    over."""
    server = sqlite_server
    first = server.writer_pid()
    with LineClient(server.port) as c:
        c.call("create_stream", {"stream_name": "k"})
    acknowledged: list[int] = []
    unexpected: list[Any] = []  # answers other than ok and unavailable, or a client's failure
    lock = threading.Lock()
    stop = threading.Event()

    def write(worker: int) -> None:
        n = 0
        try:
            while not stop.is_set():
                with LineClient(server.port, timeout=30) as c:
                    while not stop.is_set():
                        n += 1
                        tag = worker * 1_000_000 + n
                        c.send(
                            {
                                "operation": "write_event",
                                "auth": DEFAULT_AUTH,
                                "body": {"stream_name": "k", "event": {"tag": tag}},
                            }
                        )
                        try:
                            answer = c.read()
                        except ConnectionError:
                            break  # held by the child that died: a new connection
                        with lock:
                            if answer["status"]:
                                acknowledged.append(tag)
                            elif answer["code"] != "unavailable":
                                unexpected.append(answer)
        except Exception as e:  # reported by the test below
            unexpected.append(e)

    workers = [threading.Thread(target=write, args=(w,)) for w in range(4)]
    for t in workers:
        t.start()
    try:
        assert wait_for(lambda: len(acknowledged) > 200, 30)
        os.kill(first, signal.SIGKILL)
        pid = server.proc.pid if server.proc else 0
        assert wait_for(lambda: children(pid) not in ([], [first]), 30)
        count = len(acknowledged)
        assert wait_for(lambda: len(acknowledged) > count + 200, 30)  # the new child writes
    finally:
        stop.set()
        for t in workers:
            t.join(60)
    assert all(not t.is_alive() for t in workers)
    assert unexpected == []
    assert server.proc is not None and server.proc.poll() is None
    assert "the writer process ended" in server.log_text()
    stored = [e["body"]["tag"] for e in all_events(server.port, "k")]
    assert len(stored) == len(set(stored))  # none twice
    assert set(acknowledged) <= set(stored)  # none acknowledged lost


def test_a_write_the_dying_child_held_is_not_answered(sqlite_server: ServerProcess) -> None:
    """``unavailable`` promises that nothing was changed, and a write the
    child held when it died may have been committed: its connection is
    closed instead, after the answers before it, as a crash would close it.
    A write queued behind it, never sent to the child, is answered
    ``unavailable`` on a connection that stays open."""
    server = sqlite_server
    child = server.writer_pid()
    with LineClient(server.port) as held, LineClient(server.port) as queued:
        held.call("create_stream", {"stream_name": "d"})
        os.kill(child, signal.SIGSTOP)
        try:
            held.send(
                {"operation": "write_event", "auth": DEFAULT_AUTH, "body": {"stream_name": "d", "event": 1}}
            )
            held.send({"operation": "health"})  # pipelined behind the write
            time.sleep(0.3)  # the write is with the child
            queued.send(
                {"operation": "write_event", "auth": DEFAULT_AUTH, "body": {"stream_name": "d", "event": 2}}
            )
            time.sleep(0.3)
        finally:
            os.kill(child, signal.SIGKILL)
        assert queued.read()["code"] == "unavailable"
        assert held.is_closed(10) and held.buffer == b""  # no answer to either
        assert wait_for(lambda: server.writer_pid() != child, 30)
        assert queued.request("write_event", {"stream_name": "d", "event": 3})["status"] is True
    assert [e["body"] for e in all_events(server.port, "d")] in ([1, 3], [3])


@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_the_writer_process_ends_with_the_server(tmp_path: Path, how: str) -> None:
    """A graceful stop ends the child after its last write; kill -9 of the
    server ends it too (it reads the end of its socket): no orphan holding
    the database."""
    server = ServerProcess(tmp_path).start()
    try:
        child = server.writer_pid()
        with LineClient(server.port) as c:
            c.call("create_stream", {"stream_name": "e"})
            c.call("write_event", {"stream_name": "e", "event": {"n": 1}})
        if how == "SIGTERM":
            assert server.terminate() in (0, -15)
        else:
            server.kill()
        assert wait_for(lambda: not alive(child), 15)
    finally:
        server.stop()
    again = ServerProcess(tmp_path).start()  # the same database, free again
    try:
        with LineClient(again.port) as c:
            c.call("write_event", {"stream_name": "e", "event": {"n": 2}})
            assert c.call("get_stream_info", {"stream_name": "e"})["stats"]["unprocessed"] == 2
    finally:
        again.stop()
