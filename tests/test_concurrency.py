"""Many clients at once, each pipelining (PROTOCOL.md section 1, issue 2).

Threads stand in for independent clients; each has its own connection. A
barrier lines them up so their requests reach the server together.
"""

from __future__ import annotations

import json
import socket
import struct
import threading
import time
from collections.abc import Callable
from typing import Any

from tests.busclient import DEFAULT_AUTH, LineClient
from tests.servers import ServerProcess


def run_together(count: int, work: Callable[[int, threading.Barrier], Any]) -> list[Any]:
    """Run ``work(i)`` in ``count`` threads released at once; return results
    in index order, re-raising the first failure."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count
    errors: list[BaseException] = []

    def main(i: int) -> None:
        try:
            results[i] = work(i, barrier)
        except BaseException as e:  # noqa: BLE001 - re-raised below
            errors.append(e)
            barrier.abort()

    threads = [threading.Thread(target=main, args=(i,)) for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    if errors:
        raise errors[0]
    assert not any(t.is_alive() for t in threads), "a client thread hung"
    return results


def request_line(operation: str, body: Any = None) -> bytes:
    request: dict[str, Any] = {"operation": operation, "auth": DEFAULT_AUTH}
    if body is not None:
        request["body"] = body
    return json.dumps(request).encode() + b"\n"


# -- the create race ---------------------------------------------------------------


def test_create_race_has_exactly_one_winner(server: ServerProcess, stream_name: str) -> None:
    n = 16

    def create(i: int, barrier: threading.Barrier) -> dict[str, Any]:
        with LineClient(server.port) as c:
            barrier.wait(10)
            return c.request("create_stream", {"stream_name": stream_name})

    responses = run_together(n, create)
    winners = [r for r in responses if r["status"]]
    assert len(winners) == 1, responses
    losers = [r for r in responses if not r["status"]]
    assert losers == [
        {
            "operation": "create_stream",
            "status": False,
            "reason": f"stream: '{stream_name}' already exists",
            "code": "stream_exists",
        }
    ] * (n - 1)
    with LineClient(server.port) as c:
        assert (
            c.call("get_stream_info", {"stream_name": stream_name})["stream"] == winners[0]["body"]["stream"]
        )
        assert [s["name"] for s in c.call("list_streams")["streams"]].count(stream_name) == 1


def test_create_race_over_many_names(server: ServerProcess, stream_name: str) -> None:
    """Every connection tries every name in its own order: each name is won
    exactly once, whoever wins it."""
    names = [f"{stream_name}-{k}" for k in range(8)]
    n = 6

    def create_all(i: int, barrier: threading.Barrier) -> list[dict[str, Any]]:
        order = names[i % len(names) :] + names[: i % len(names)]
        with LineClient(server.port) as c:
            barrier.wait(10)
            c.send_raw(b"".join(request_line("create_stream", {"stream_name": name}) for name in order))
            return [c.read() for _ in order]

    results = run_together(n, create_all)
    wins: dict[str, int] = {name: 0 for name in names}
    for responses in results:
        for r in responses:
            if r["status"]:
                wins[r["body"]["stream"]["name"]] += 1
            else:
                assert r["code"] == "stream_exists", r
    assert wins == {name: 1 for name in names}


def test_pipelined_creates_of_one_name_on_one_connection(client: LineClient, stream_name: str) -> None:
    """Several creates in one group commit: the first wins, in request order."""
    client.send_raw(request_line("create_stream", {"stream_name": stream_name}) * 10)
    responses = [client.read() for _ in range(10)]
    assert responses[0]["status"] is True
    assert [r["code"] for r in responses[1:]] == ["stream_exists"] * 9


# -- many concurrent writers -----------------------------------------------------------


def test_concurrent_writers_lose_nothing_and_keep_each_writers_order(
    server: ServerProcess, stream_name: str
) -> None:
    writers, per_writer = 8, 60
    with LineClient(server.port) as c:
        c.call("create_stream", {"stream_name": stream_name})

    def write(w: int, barrier: threading.Barrier) -> list[str]:
        with LineClient(server.port) as c:
            barrier.wait(10)
            ids: list[str] = []
            if w % 2 == 0:
                # Pipelined: all of this writer's requests in one send.
                c.send_raw(
                    b"".join(
                        request_line("write_event", {"stream_name": stream_name, "event": {"w": w, "n": n}})
                        for n in range(per_writer)
                    )
                )
                for _ in range(per_writer):
                    response = c.read()
                    assert response["status"] is True, response
                    ids.append(response["body"]["event"]["id"])
            else:
                # One at a time, each waiting for its acknowledgement.
                for n in range(per_writer):
                    event = c.call("write_event", {"stream_name": stream_name, "event": {"w": w, "n": n}})[
                        "event"
                    ]
                    ids.append(event["id"])
            return ids

    acked = run_together(writers, write)
    with LineClient(server.port) as c:
        events = c.call("get_stream_events", {"stream_name": stream_name})["events"]
    assert len(events) == writers * per_writer
    assert {e["id"] for e in events} == {i for ids in acked for i in ids}
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(set(seqs)), "events not in write order, or seq repeated"
    for w in range(writers):
        mine = [e for e in events if e["body"]["w"] == w]
        assert [e["body"]["n"] for e in mine] == list(range(per_writer)), f"writer {w} out of order"
        assert [e["id"] for e in mine] == acked[w]


def test_concurrent_batch_writers_are_atomic_and_contiguous(server: ServerProcess, stream_name: str) -> None:
    """write_events batches from many connections never interleave."""
    writers, batches, size = 6, 5, 20
    with LineClient(server.port) as c:
        c.call("create_stream", {"stream_name": stream_name})

    def write(w: int, barrier: threading.Barrier) -> None:
        with LineClient(server.port) as c:
            barrier.wait(10)
            c.send_raw(
                b"".join(
                    request_line(
                        "write_events",
                        {"stream_name": stream_name, "events": [[w, b, k] for k in range(size)]},
                    )
                    for b in range(batches)
                )
            )
            for _ in range(batches):
                assert c.read()["status"] is True

    run_together(writers, write)
    with LineClient(server.port) as c:
        bodies = [e["body"] for e in c.call("get_stream_events", {"stream_name": stream_name})["events"]]
    assert len(bodies) == writers * batches * size
    chunks = [bodies[i : i + size] for i in range(0, len(bodies), size)]
    for chunk in chunks:
        w, b = chunk[0][:2]
        assert chunk == [[w, b, k] for k in range(size)], "a batch was split or interleaved"
    for w in range(writers):
        assert [c[0][1] for c in chunks if c[0][0] == w] == list(range(batches))


def test_concurrent_markers_and_readers(server: ServerProcess, stream_name: str) -> None:
    """Consumers marking disjoint events at once: every mark lands."""
    with LineClient(server.port) as c:
        c.call("create_stream", {"stream_name": stream_name})
        events = c.call("write_events", {"stream_name": stream_name, "events": list(range(120))})["events"]
    ids = [e["id"] for e in events]
    consumers = 4

    def consume(i: int, barrier: threading.Barrier) -> None:
        mine = ids[i::consumers]
        with LineClient(server.port) as c:
            barrier.wait(10)
            c.send_raw(
                b"".join(
                    request_line("mark_event", {"event_id": event_id, "status": 1 + (i % 2)})
                    for event_id in mine
                )
            )
            for _ in mine:
                assert c.read() == {"operation": "mark_event", "status": True}

    run_together(consumers, consume)
    with LineClient(server.port) as c:
        after = c.call("get_stream_events", {"stream_name": stream_name})["events"]
        assert c.call("process_events", {"stream_name": stream_name})["events"] == []
    expected = {event_id: 1 + (ids.index(event_id) % consumers % 2) for event_id in ids}
    assert {e["id"]: e["status"] for e in after} == expected


# -- pipelining ----------------------------------------------------------------------------


def test_pipelined_mixed_requests_answer_in_order_and_read_own_writes(
    client: LineClient, stream_name: str
) -> None:
    rounds = 60
    requests: list[bytes] = [request_line("create_stream", {"stream_name": stream_name})]
    for n in range(rounds):
        requests += [
            request_line("write_event", {"stream_name": stream_name, "event": {"n": n}}),
            request_line("get_stream_events", {"stream_name": stream_name}),
            b'{"operation": "health"}\n',
            b"not json\n",
            request_line("process_events", {"stream_name": stream_name, "limit": 1, "after_seq": 0}),
            request_line("get_stream_info", {"stream_name": f"{stream_name}-missing"}),
        ]
    requests.append(request_line("get_stream_info", {"stream_name": stream_name}))
    client.send_raw(b"".join(requests))
    responses = [client.read() for _ in requests]

    assert responses[0]["operation"] == "create_stream" and responses[0]["status"] is True
    written: list[str] = []
    for n in range(rounds):
        write, read, health, bad, process, missing = responses[1 + 6 * n : 7 + 6 * n]
        assert write["operation"] == "write_event" and write["body"]["event"]["body"] == {"n": n}
        written.append(write["body"]["event"]["id"])
        # Read-your-writes: the read right after the write sees it, and only
        # the writes before it.
        assert read["operation"] == "get_stream_events"
        assert [e["id"] for e in read["body"]["events"]] == written
        assert health == {"operation": "health", "status": True}
        assert bad["operation"] == "decode_request" and bad["code"] == "invalid_json"
        assert process["operation"] == "process_events"
        assert [e["id"] for e in process["body"]["events"]] == written[:1]
        assert missing["operation"] == "get_stream_info" and missing["code"] == "stream_not_found"
    assert responses[-1]["body"]["stream"]["name"] == stream_name


def test_pipelined_marks_are_seen_by_the_reads_after_them(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    events = client.call("write_events", {"stream_name": stream_name, "events": list(range(50))})["events"]
    requests: list[bytes] = []
    for e in events:
        requests.append(request_line("mark_event", {"event_id": e["id"], "status": 1}))
        requests.append(request_line("process_events", {"stream_name": stream_name}))
    client.send_raw(b"".join(requests))
    for k in range(len(events)):
        assert client.read() == {"operation": "mark_event", "status": True}
        remaining = client.read()["body"]["events"]
        assert [r["id"] for r in remaining] == [x["id"] for x in events[k + 1 :]]


def test_hundreds_of_pipelined_writes_in_one_send(client: LineClient, stream_name: str) -> None:
    count = 500
    client.call("create_stream", {"stream_name": stream_name})
    client.send_raw(
        b"".join(request_line("write_event", {"stream_name": stream_name, "event": n}) for n in range(count))
        + request_line("get_stream_events", {"stream_name": stream_name})
    )
    acks = [client.read() for _ in range(count)]
    assert [a["body"]["event"]["body"] for a in acks] == list(range(count))
    events = client.read()["body"]["events"]
    assert [e["id"] for e in events] == [a["body"]["event"]["id"] for a in acks]


def test_many_pipelining_clients_each_get_their_own_answers(server: ServerProcess, stream_name: str) -> None:
    clients, per_client = 8, 40

    def work(i: int, barrier: threading.Barrier) -> None:
        name = f"{stream_name}-{i}"
        with LineClient(server.port) as c:
            barrier.wait(10)
            c.send_raw(
                request_line("create_stream", {"stream_name": name})
                + b"".join(
                    request_line("write_event", {"stream_name": name, "event": [i, n]})
                    + request_line("get_stream_info", {"stream_name": name})
                    for n in range(per_client)
                )
                + request_line("get_stream_events", {"stream_name": name})
            )
            assert c.read()["body"]["stream"]["name"] == name
            for n in range(per_client):
                assert c.read()["body"]["event"]["body"] == [i, n]
                assert c.read()["body"]["stream"]["name"] == name
            bodies = [e["body"] for e in c.read()["body"]["events"]]
            assert bodies == [[i, n] for n in range(per_client)]

    run_together(clients, work)


def test_clients_that_reset_while_their_writes_commit_cost_nothing(
    server: ServerProcess, stream_name: str
) -> None:
    """Clients pipeline writes and reset the connection (RST) at once: their
    answers, sent the moment each commit is in, meet a dead socket. Nothing
    is logged as a failure, the counts agree with the events, and the next
    client is served."""
    count, per_client = 16, 20
    with LineClient(server.port) as c:
        c.call("create_stream", {"stream_name": stream_name})
    logged = len(server.log_text())

    def vanish(i: int, barrier: threading.Barrier) -> None:
        s = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        barrier.wait(10)
        s.sendall(
            b"".join(
                request_line("write_event", {"stream_name": stream_name, "event": [i, n]})
                for n in range(per_client)
            )
        )
        time.sleep(i * 0.0002)  # 0 to 3 ms: before, while and after the commit
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()

    for _ in range(3):  # the race is not the same every time
        run_together(count, vanish)
    with LineClient(server.port) as c:
        after = c.call("write_event", {"stream_name": stream_name, "event": "after"})
        events = c.call("get_stream_events", {"stream_name": stream_name})["events"]
        stats = c.call("get_stream_info", {"stream_name": stream_name})["stats"]
    assert events[-1]["id"] == after["event"]["id"]
    assert stats["unprocessed"] == len(events) <= 3 * count * per_client + 1
    new_log = server.log_text()[logged:]
    assert "Traceback" not in new_log and "Unhandled" not in new_log, new_log[-3000:]


# -- a slow request does not hold up other connections -----------------------------------------


def test_long_poll_does_not_delay_other_connections(server: ServerProcess, stream_name: str) -> None:
    """A long poll held on one connection; another connection is served
    meanwhile. Were connections served one at a time, the other's requests
    would wait out the poll's 30 s (and time out here), and the poll would
    end empty instead of returning the event the other connection wrote."""
    with LineClient(server.port) as setup:
        setup.call("create_stream", {"stream_name": stream_name})
    with LineClient(server.port, timeout=45) as slow, LineClient(server.port) as other:
        slow.send_raw(
            request_line("process_events", {"stream_name": stream_name, "wait_seconds": 30})
            + b'{"operation": "health"}\n'
        )
        assert other.call("health", auth=None) is None
        other.call("create_stream", {"stream_name": f"{stream_name}-other"})
        other.call("write_event", {"stream_name": f"{stream_name}-other", "event": 1})
        assert len(other.call("get_stream_events", {"stream_name": f"{stream_name}-other"})["events"]) == 1
        written = other.call("write_event", {"stream_name": stream_name, "event": "wake"})["event"]
        polled = slow.read()
        assert polled["operation"] == "process_events"
        assert [e["id"] for e in polled["body"]["events"]] == [written["id"]]
        # The request pipelined behind the poll was answered after it.
        assert slow.read() == {"operation": "health", "status": True}


def test_big_read_does_not_block_small_requests_elsewhere(server: ServerProcess, stream_name: str) -> None:
    """A connection that does not read its large responses does not stop
    another connection from being served."""
    with LineClient(server.port) as setup:
        setup.call("create_stream", {"stream_name": stream_name})
        body = {"stream_name": stream_name, "events": [{"pad": "x" * 900, "k": k} for k in range(1000)]}
        setup.call("write_events", body)
    with LineClient(server.port) as hog, LineClient(server.port) as other:
        # ~1 MB per response, more than the socket buffers hold, not read
        # while the other connection works.
        hog.send_raw(request_line("get_stream_events", {"stream_name": stream_name}) * 10)
        for _ in range(20):
            assert (
                other.call("get_stream_info", {"stream_name": stream_name})["stream"]["name"] == stream_name
            )
            assert other.call("health", auth=None) is None
        for _ in range(10):
            assert len(hog.read()["body"]["events"]) == 1000
