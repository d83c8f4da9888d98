"""Several server processes on one PostgreSQL database behave as one broker.

Three nodes share a fresh database. Producers write through all of them and
consumers lease through all of them: every event is processed, none is held
by two consumers at once, none is lost. A long poll on one node is woken by a
write, a mark or a delete on another (LISTEN/NOTIFY). Every node runs the
lease sweep and the retention purge, often, at the same time: the counts
stay exact. Connections killed under the nodes (``pg_terminate_backend``)
give ``unavailable`` answers at most, and the nodes recover by themselves.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.busclient import DEFAULT_AUTH, LineClient
from tests.pg import PgAdmin, terminate_connections
from tests.servers import ServerProcess

pytestmark = pytest.mark.postgresql

NODES = 3


@pytest.fixture(scope="module")
def pg_url(pg_admin: PgAdmin) -> Iterator[str]:
    with pg_admin.database("eventbus_multinode") as url:
        yield url


@pytest.fixture(scope="module")
def nodes(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[ServerProcess]]:
    """Three servers on one database, started at once (they take turns to
    migrate it). Housekeeping every 0.1 s, so the nodes' sweeps and purges
    overlap."""
    base = tmp_path_factory.mktemp("nodes")
    procs = [
        ServerProcess(Path(base) / f"node{i}", database=pg_url, server={"housekeeping_interval_seconds": 0.1})
        for i in range(NODES)
    ]
    with ThreadPoolExecutor(NODES) as pool:
        started = list(pool.map(lambda p: p.start(), procs))
    yield started
    for p in started:
        p.stop()


def _stats(port: int, stream: str) -> dict[str, int]:
    with LineClient(port) as c:
        return c.call("get_stream_info", {"stream_name": stream})["stats"]


def _wait_for(predicate: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def _expires(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["lease_expires_at"].replace("Z", "+00:00")).timestamp()


def test_a_stream_is_the_same_on_every_node(nodes: list[ServerProcess], stream_name: str) -> None:
    a, b, c = (LineClient(n.port) for n in nodes)
    with a, b, c:
        created = a.call("create_stream", {"stream_name": stream_name, "max_deliveries": 4})["stream"]
        assert b.call("get_stream_info", {"stream_name": stream_name})["stream"] == created
        assert c.request("create_stream", {"stream_name": stream_name})["code"] == "stream_exists"
        event = c.call("write_event", {"stream_name": stream_name, "event": {"via": "c"}})["event"]
        assert [e["id"] for e in b.call("get_stream_events", {"stream_name": stream_name})["events"]] == [
            event["id"]
        ]
        assert b.call("delete_stream", {"stream_name": stream_name}) is None
        assert a.request("get_stream_info", {"stream_name": stream_name})["code"] == "stream_not_found"
        assert (
            c.request("write_event", {"stream_name": stream_name, "event": 1})["code"] == "stream_not_found"
        )
        assert a.request("mark_event", {"event_id": event["id"], "status": 1})["code"] == "event_not_found"


def test_producers_and_consumers_on_every_node(nodes: list[ServerProcess], stream_name: str) -> None:
    """Every event processed exactly once: leases (60 s) never run out here,
    so no event may reach a second consumer."""
    per_producer = 200
    with LineClient(nodes[0].port) as admin:
        admin.call("create_stream", {"stream_name": stream_name})
    written: list[list[str]] = [[] for _ in range(NODES * 2)]
    got: list[list[dict[str, Any]]] = [[] for _ in range(NODES * 2)]
    problems: list[str] = []
    done = threading.Event()

    def produce(k: int) -> None:
        try:
            with LineClient(nodes[k % NODES].port) as c:
                n = 0
                while n < per_producer:
                    if n % 3 == 0:
                        values = [{"p": k, "n": n + i} for i in range(min(5, per_producer - n))]
                        events = c.call("write_events", {"stream_name": stream_name, "events": values})[
                            "events"
                        ]
                        written[k] += [e["id"] for e in events]
                        n += len(values)
                    else:
                        event = c.call("write_event", {"stream_name": stream_name, "event": {"p": k, "n": n}})
                        written[k].append(event["event"]["id"])
                        n += 1
        except Exception as e:
            problems.append(f"producer {k}: {e!r}")

    def consume(k: int) -> None:
        try:
            with LineClient(nodes[k % NODES].port, timeout=30) as c:
                while not done.is_set():
                    body = {"stream_name": stream_name, "limit": 7, "lease_seconds": 60, "wait_seconds": 0.5}
                    events = c.call("process_events", body)["events"]
                    got[k] += events
                    for e in events:  # pipelined marks, each under its own lease
                        c.send(
                            {
                                "operation": "mark_event",
                                "auth": DEFAULT_AUTH,
                                "body": {"event_id": e["id"], "status": 1, "lease_id": e["lease_id"]},
                            }
                        )
                    for e in events:
                        answer = c.read()
                        if answer["status"] is not True:
                            problems.append(f"consumer {k}: mark {e['id']}: {answer}")
        except Exception as e:
            problems.append(f"consumer {k}: {e!r}")

    tailed: list[dict[str, Any]] = []

    def tail() -> None:
        """A reader following the stream with after_seq while it grows."""
        try:
            with LineClient(nodes[2].port) as c:
                after = None
                while True:
                    finishing = done.is_set()
                    body: dict[str, Any] = {"stream_name": stream_name, "limit": 50}
                    if after is not None:
                        body["after_seq"] = after
                    events = c.call("get_stream_events", body)["events"]
                    tailed.extend(events)
                    if events:
                        after = events[-1]["seq"]
                    elif finishing:
                        return
                    else:
                        time.sleep(0.01)
        except Exception as e:
            problems.append(f"tail: {e!r}")

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(NODES * 2)]
    threads += [threading.Thread(target=produce, args=(k,)) for k in range(NODES * 2)]
    threads.append(threading.Thread(target=tail))
    for t in threads:
        t.start()
    total = NODES * 2 * per_producer
    try:
        for t in threads[NODES * 2 : NODES * 4]:
            t.join(120)
        _wait_for(
            lambda: problems or _stats(nodes[1].port, stream_name)["processed"] >= total, 120, "processing"
        )
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert not problems, problems[:5]
    every_written = [i for ids in written for i in ids]
    assert len(every_written) == total
    deliveries = [e for events in got for e in events]
    ids = [e["id"] for e in deliveries]
    assert len(ids) == len(set(ids)), "an event went to two consumers"
    assert set(ids) == set(every_written), "an event was lost"
    assert all(e["deliveries"] == 1 for e in deliveries)
    # Writers through three nodes, and a reader paging behind them met each
    # event once, in seq order: none committed behind its back.
    assert sorted(e["id"] for e in tailed) == sorted(every_written)
    assert [e["seq"] for e in tailed] == sorted({e["seq"] for e in tailed})
    for node in nodes:  # the kept counts agree with what happened, seen from every node
        assert _stats(node.port, stream_name) == {
            "unprocessed": 0,
            "processed": total,
            "retry": 0,
            "dead": 0,
            "leased": 0,
            "total": total,
        }


def test_abandoned_leases_move_between_nodes_without_overlap(
    nodes: list[ServerProcess], stream_name: str
) -> None:
    """Consumers that drop half of what they lease (1 s leases): the events
    come back, through any node, but never while a lease on them holds."""
    lease_seconds = 1
    with LineClient(nodes[0].port) as admin:
        admin.call("create_stream", {"stream_name": stream_name})
        written = {
            e["id"]
            for e in admin.call("write_events", {"stream_name": stream_name, "events": list(range(120))})[
                "events"
            ]
        }
    got: list[list[dict[str, Any]]] = [[] for _ in range(NODES * 2)]
    problems: list[str] = []
    done = threading.Event()

    def consume(k: int) -> None:
        try:
            with LineClient(nodes[k % NODES].port, timeout=30) as c:
                while not done.is_set():
                    body = {
                        "stream_name": stream_name,
                        "limit": 4,
                        "lease_seconds": lease_seconds,
                        "wait_seconds": 0.5,
                    }
                    events = c.call("process_events", body)["events"]
                    got[k] += events
                    for e in events:
                        if e["deliveries"] == 1 and e["body"] % 2 == 0:
                            continue  # dropped: this consumer "crashed" on it
                        answer = c.request(
                            "mark_event", {"event_id": e["id"], "status": 1, "lease_id": e["lease_id"]}
                        )
                        # A slow consumer may lose its lease: refused, and the
                        # event is someone else's now. Anything else is a bug.
                        if answer["status"] is not True and answer.get("code") != "lease_lost":
                            problems.append(f"consumer {k}: {answer}")
        except Exception as e:
            problems.append(f"consumer {k}: {e!r}")

    threads = [threading.Thread(target=consume, args=(k,)) for k in range(NODES * 2)]
    for t in threads:
        t.start()
    try:
        _wait_for(
            lambda: problems or _stats(nodes[2].port, stream_name)["processed"] == len(written), 90, "all"
        )
    finally:
        done.set()
        for t in threads:
            t.join(60)
    assert not problems, problems[:5]
    by_event: dict[str, list[dict[str, Any]]] = {}
    for e in (e for events in got for e in events):
        by_event.setdefault(e["id"], []).append(e)
    assert set(by_event) == written
    for event_id, leases in by_event.items():
        leases.sort(key=lambda e: e["deliveries"])
        assert [e["deliveries"] for e in leases] == list(range(1, len(leases) + 1)), event_id
        for earlier, later in zip(leases, leases[1:]):
            # Each lease started (server time) no earlier than the last ran out.
            assert _expires(later) - lease_seconds >= _expires(earlier) - 0.001, (event_id, earlier, later)
    for leases in by_event.values():
        if leases[0]["body"] % 2 == 0:  # dropped once, so leased at least twice
            assert len(leases) >= 2, leases


def _poll(port: int, operation: str, stream: str, **extra: Any) -> tuple[LineClient, float]:
    waiter = LineClient(port, timeout=30)
    waiter.send(
        {
            "operation": operation,
            "auth": DEFAULT_AUTH,
            "body": {"stream_name": stream, "wait_seconds": 20, **extra},
        }
    )
    time.sleep(0.5)  # let it find nothing and wait
    return waiter, time.monotonic()


def test_long_poll_on_one_node_is_woken_by_a_write_on_another(
    nodes: list[ServerProcess], stream_name: str
) -> None:
    with LineClient(nodes[0].port) as writer:
        writer.call("create_stream", {"stream_name": stream_name})
        waiter, started = _poll(nodes[1].port, "process_events", stream_name, lease_seconds=30)
        with waiter:
            event = writer.call("write_event", {"stream_name": stream_name, "event": {"wake": 1}})["event"]
            response = waiter.read()
            elapsed = time.monotonic() - started
    assert response["status"] is True
    assert [e["id"] for e in response["body"]["events"]] == [event["id"]]
    assert elapsed < 10, "the poll ended by its timeout, not by the write on the other node"


def test_long_poll_is_woken_by_a_mark_or_a_delete_on_another_node(
    nodes: list[ServerProcess], stream_name: str
) -> None:
    with LineClient(nodes[0].port) as a:
        a.call("create_stream", {"stream_name": stream_name})
        event = a.call("write_event", {"stream_name": stream_name, "event": 1})["event"]
        waiter, started = _poll(nodes[2].port, "retry_events", stream_name)
        with waiter:
            a.call("mark_event", {"event_id": event["id"], "status": 2})
            response = waiter.read()
        assert [e["id"] for e in response["body"]["events"]] == [event["id"]]
        assert time.monotonic() - started < 10
        a.call("mark_event", {"event_id": event["id"], "status": 1})
        waiter, started = _poll(nodes[1].port, "process_events", stream_name)
        with waiter:
            a.call("delete_stream", {"stream_name": stream_name})
            response = waiter.read()
        assert response["code"] == "stream_not_found"
        assert time.monotonic() - started < 10


def test_every_node_sweeps_and_purges_and_the_counts_stay_exact(
    nodes: list[ServerProcess], stream_name: str
) -> None:
    """All three nodes dead-letter expired leases and purge old events, ten
    times a second each: every change is counted once."""
    dead_letters = f"{stream_name}-dead"
    expiring = f"{stream_name}-old"
    with LineClient(nodes[0].port) as a:
        a.call("create_stream", {"stream_name": dead_letters, "max_deliveries": 1})
        a.call("write_events", {"stream_name": dead_letters, "events": list(range(300))})
        leased = a.call("process_events", {"stream_name": dead_letters, "limit": 300, "lease_seconds": 1})
        assert len(leased["events"]) == 300
        a.call("create_stream", {"stream_name": expiring, "retention_seconds": 2})
        for _ in range(3):
            a.call("write_events", {"stream_name": expiring, "events": list(range(200))})
    _wait_for(lambda: _stats(nodes[1].port, dead_letters)["dead"] == 300, 30, "dead letters")
    _wait_for(lambda: _stats(nodes[2].port, expiring)["total"] == 0, 30, "the purge")
    time.sleep(0.5)  # a few more rounds on every node: nothing may move now
    for node in nodes:
        assert _stats(node.port, dead_letters) == {
            "unprocessed": 0,
            "processed": 0,
            "retry": 0,
            "dead": 300,
            "leased": 0,
            "total": 300,
        }
        assert _stats(node.port, expiring) == {
            "unprocessed": 0,
            "processed": 0,
            "retry": 0,
            "dead": 0,
            "leased": 0,
            "total": 0,
        }
        with LineClient(node.port) as c:
            assert c.call("get_stream_events", {"stream_name": expiring})["events"] == []


def test_killed_connections_give_unavailable_then_recover(
    nodes: list[ServerProcess], pg_url: str, stream_name: str
) -> None:
    """pg_terminate_backend on every connection of every node: answers are
    either right or ``unavailable`` (safe to retry), and soon right again,
    long polls across nodes included, with no restart."""
    with LineClient(nodes[0].port) as a:
        a.call("create_stream", {"stream_name": stream_name})
    for node in nodes:  # each node has its writer, a reader and its listener connected
        with LineClient(node.port) as c:
            c.call("write_event", {"stream_name": stream_name, "event": "before"})
            c.call("get_stream_events", {"stream_name": stream_name})
    listens_before = [n.log_text().count("listening for changes from other nodes") for n in nodes]
    assert terminate_connections(pg_url) >= NODES * 3
    answers: list[dict[str, Any]] = []
    for node in nodes:
        with LineClient(node.port) as c:
            for _ in range(3):
                answers.append(c.request("write_event", {"stream_name": stream_name, "event": "during"}))
                answers.append(c.request("get_stream_events", {"stream_name": stream_name}))
    refused = [r for r in answers if r["status"] is not True]
    assert all(r["code"] == "unavailable" for r in refused), refused

    def healthy() -> bool:
        for node in nodes:
            with LineClient(node.port) as c:
                if (
                    c.request("write_event", {"stream_name": stream_name, "event": "after"})["status"]
                    is not True
                ):
                    return False
        return True

    _wait_for(healthy, 30, "every node to write again")
    _wait_for(
        lambda: all(
            n.log_text().count("listening for changes from other nodes") > before
            for n, before in zip(nodes, listens_before)
        ),
        30,
        "the listeners to reconnect",
    )
    with LineClient(nodes[2].port) as c:
        events = c.call("get_stream_events", {"stream_name": stream_name})["events"]
    acknowledged = sum(1 for r in answers if r["operation"] == "write_event" and r["status"] is True)
    assert [e["body"] for e in events].count("during") == acknowledged
    assert [e["body"] for e in events][:NODES] == ["before"] * NODES
    # Cross-node wake-ups work again over the new listener connections.
    test_long_poll_on_one_node_is_woken_by_a_write_on_another(nodes, f"{stream_name}-poll")
