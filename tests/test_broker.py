"""Broker semantics over real TCP (PROTOCOL.md section 7): batches, paging,
leases, long polling, dead letters, idempotent writes, stats, retention."""

from __future__ import annotations

import threading
import time

import pytest

from tests.busclient import DEFAULT_AUTH, LineClient
from tests.servers import ServerProcess


def _write_n(client: LineClient, stream: str, n: int, batch: int = 1000) -> list[dict]:
    written: list[dict] = []
    for start in range(0, n, batch):
        values = [{"n": i} for i in range(start, min(n, start + batch))]
        written += client.call("write_events", {"stream_name": stream, "events": values})["events"]
    return written


# -- 7.1 batches -----------------------------------------------------------------


def test_write_events_writes_all_in_order(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    events = client.call("write_events", {"stream_name": stream_name, "events": [1, "two", {"three": 3}]})[
        "events"
    ]
    assert [e["body"] for e in events] == [1, "two", {"three": 3}]
    assert [e["seq"] for e in events] == sorted(e["seq"] for e in events)
    stored = client.call("get_stream_events", {"stream_name": stream_name})["events"]
    assert [e["id"] for e in stored] == [e["id"] for e in events]


@pytest.mark.parametrize(
    "events",
    [[], [1, None], list(range(1001)), "not a list", [1] * 0],
)
def test_write_events_refuses_bad_batches_whole(client: LineClient, stream_name: str, events: object) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    response = client.request("write_events", {"stream_name": stream_name, "events": events})
    assert response["status"] is False and response["code"] in ("invalid_field", "missing_fields")
    assert client.call("get_stream_events", {"stream_name": stream_name})["events"] == []


def test_write_events_to_missing_stream(client: LineClient, stream_name: str) -> None:
    response = client.request("write_events", {"stream_name": stream_name, "events": [1]})
    assert response["code"] == "stream_not_found"


def test_mark_events_reports_marked_and_not_found(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    ids = [e["id"] for e in _write_n(client, stream_name, 5)]
    missing = "00000000-0000-7000-8000-000000000000"
    result = client.call("mark_events", {"event_ids": ids[:3] + [missing], "status": 1})
    assert result == {"marked": 3, "not_found": [missing], "lease_lost": []}
    left = client.call("process_events", {"stream_name": stream_name})["events"]
    assert [e["id"] for e in left] == ids[3:]


# -- 7.2 listing and paging ----------------------------------------------------------


def test_list_streams_shows_created_streams(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    names = [s["name"] for s in client.call("list_streams", {})["streams"]]
    assert stream_name in names
    assert names == sorted(names)


def test_paging_25000_events_returns_each_once_in_order(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    written = [e["id"] for e in _write_n(client, stream_name, 25_000)]
    for operation in ("get_stream_events", "process_events"):
        seen: list[str] = []
        after = None
        pages = 0
        while True:
            body: dict = {"stream_name": stream_name, "limit": 3000}
            if after is not None:
                body["after_seq"] = after
            page = client.call(operation, body)
            seen += [e["id"] for e in page["events"]]
            pages += 1
            after = page["next_after_seq"]
            if after is None:
                break
            assert after == page["events"][-1]["seq"]
        assert seen == written, operation
        assert pages == 9  # 8 full pages of 3000, then 1000


def test_server_maximum_applies_without_limit(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    written = _write_n(client, stream_name, 10_050)
    page = client.call("get_stream_events", {"stream_name": stream_name})
    assert len(page["events"]) == 10_000
    assert page["next_after_seq"] == written[9_999]["seq"]
    rest = client.call("get_stream_events", {"stream_name": stream_name, "after_seq": page["next_after_seq"]})
    assert [e["id"] for e in rest["events"]] == [e["id"] for e in written[10_000:]]
    assert rest["next_after_seq"] is None


# -- 7.3 leases --------------------------------------------------------------------------


def _lease_all(port: int, stream: str, out: list[str], errors: list[str]) -> None:
    """A consumer: lease until nothing is left, mark everything processed."""
    try:
        with LineClient(port) as c:
            while True:
                events = c.call("process_events", {"stream_name": stream, "limit": 7, "lease_seconds": 60})[
                    "events"
                ]
                if not events:
                    return
                out += [e["id"] for e in events]
                marked = c.call("mark_events", {"event_ids": [e["id"] for e in events], "status": 1})
                assert marked["marked"] == len(events)
    except Exception as e:  # reported by the test thread
        errors.append(repr(e))


@pytest.mark.parametrize("consumers", [2, 10])
def test_competing_consumers_get_disjoint_events(
    server: ServerProcess, client: LineClient, stream_name: str, consumers: int
) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    written = {e["id"] for e in _write_n(client, stream_name, 600)}
    got: list[list[str]] = [[] for _ in range(consumers)]
    errors: list[str] = []
    threads = [
        threading.Thread(target=_lease_all, args=(server.port, stream_name, got[i], errors))
        for i in range(consumers)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    every = [i for ids in got for i in ids]
    assert len(every) == len(set(every)), "an event went to two consumers"
    assert set(every) == written
    stats = client.call("get_stream_info", {"stream_name": stream_name})["stats"]
    assert stats["processed"] == 600 and stats["unprocessed"] == 0


def test_plain_process_events_stays_read_only(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    _write_n(client, stream_name, 3)
    first = client.call("process_events", {"stream_name": stream_name})["events"]
    second = client.call("process_events", {"stream_name": stream_name})["events"]
    assert first == second
    assert all(e["deliveries"] == 0 and "lease_id" not in e for e in first)


def test_leased_events_are_not_offered_twice(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    _write_n(client, stream_name, 4)
    a = client.call("process_events", {"stream_name": stream_name, "limit": 3, "lease_seconds": 60})["events"]
    b = client.call("process_events", {"stream_name": stream_name, "lease_seconds": 60})["events"]
    assert len(a) == 3 and len(b) == 1
    assert {e["id"] for e in a}.isdisjoint(e["id"] for e in b)
    assert all(e["deliveries"] == 1 and e["lease_id"] for e in a + b)
    # Plain calls still see every unprocessed event.
    assert len(client.call("process_events", {"stream_name": stream_name})["events"]) == 4
    stats = client.call("get_stream_info", {"stream_name": stream_name})["stats"]
    assert stats["leased"] == 4


def test_crashed_consumer_loses_nothing(server: ServerProcess, client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    ids = [e["id"] for e in _write_n(client, stream_name, 5)]
    with LineClient(server.port) as doomed:
        taken = doomed.call("process_events", {"stream_name": stream_name, "lease_seconds": 1})["events"]
        assert [e["id"] for e in taken] == ids
    # The consumer vanished mid-lease; nothing is offered until the lease ends.
    assert client.call("process_events", {"stream_name": stream_name, "lease_seconds": 30})["events"] == []
    time.sleep(1.2)
    again = client.call("process_events", {"stream_name": stream_name, "lease_seconds": 30})["events"]
    assert [e["id"] for e in again] == ids
    assert all(e["deliveries"] == 2 for e in again)


def test_stale_lease_mark_is_refused(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    _write_n(client, stream_name, 1)
    first = client.call("process_events", {"stream_name": stream_name, "lease_seconds": 1})["events"][0]
    time.sleep(1.2)
    second = client.call("process_events", {"stream_name": stream_name, "lease_seconds": 30})["events"][0]
    assert second["id"] == first["id"] and second["lease_id"] != first["lease_id"]
    stale = client.request(
        "mark_event", {"event_id": first["id"], "status": 1, "lease_id": first["lease_id"]}
    )
    assert stale["status"] is False and stale["code"] == "lease_lost"
    assert client.call("get_stream_events", {"stream_name": stream_name})["events"][0]["status"] == 0
    batch = client.call(
        "mark_events", {"event_ids": [first["id"]], "status": 1, "lease_id": first["lease_id"]}
    )
    assert batch == {"marked": 0, "not_found": [], "lease_lost": [first["id"]]}
    client.call("mark_event", {"event_id": second["id"], "status": 1, "lease_id": second["lease_id"]})
    # Marking ended the lease: the same lease cannot mark again.
    again = client.request(
        "mark_event", {"event_id": second["id"], "status": 2, "lease_id": second["lease_id"]}
    )
    assert again["code"] == "lease_lost"
    assert client.call("get_stream_events", {"stream_name": stream_name})["events"][0]["status"] == 1


# -- 7.4 long polling ---------------------------------------------------------------------


def test_long_poll_is_woken_by_a_write_elsewhere(
    server: ServerProcess, client: LineClient, stream_name: str
) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    with LineClient(server.port, timeout=30) as waiter:
        waiter.send(
            {
                "operation": "process_events",
                "auth": DEFAULT_AUTH,
                "body": {"stream_name": stream_name, "wait_seconds": 20, "lease_seconds": 30},
            }
        )
        time.sleep(0.3)
        # Other connections are not held up by the waiting one.
        assert client.request("health", auth=None)["status"] is True
        started = time.monotonic()
        written = client.call("write_event", {"stream_name": stream_name, "event": {"wake": 1}})["event"]
        response = waiter.read()
        elapsed = time.monotonic() - started
    assert response["status"] is True
    assert [e["id"] for e in response["body"]["events"]] == [written["id"]]
    assert elapsed < 10, "the poll ended by timeout, not by the write"


def test_long_poll_times_out_with_empty_list(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    started = time.monotonic()
    body = client.call("retry_events", {"stream_name": stream_name, "wait_seconds": 0.5})
    assert body["events"] == [] and body["next_after_seq"] is None
    assert time.monotonic() - started >= 0.45


def test_requests_pipelined_behind_a_long_poll_wait(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    client.send(
        {
            "operation": "process_events",
            "auth": DEFAULT_AUTH,
            "body": {"stream_name": stream_name, "wait_seconds": 0.5},
        }
    )
    client.send({"operation": "health"})
    assert client.read()["operation"] == "process_events"
    assert client.read()["operation"] == "health"


def test_long_poll_for_retry_is_woken_by_a_mark(
    server: ServerProcess, client: LineClient, stream_name: str
) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    event = client.call("write_event", {"stream_name": stream_name, "event": 1})["event"]
    with LineClient(server.port, timeout=30) as waiter:
        waiter.send(
            {
                "operation": "retry_events",
                "auth": DEFAULT_AUTH,
                "body": {"stream_name": stream_name, "wait_seconds": 20},
            }
        )
        time.sleep(0.3)
        started = time.monotonic()
        client.call("mark_event", {"event_id": event["id"], "status": 2})
        response = waiter.read()
    assert [e["id"] for e in response["body"]["events"]] == [event["id"]]
    assert time.monotonic() - started < 10


# -- 7.5 dead letters -----------------------------------------------------------------------


def test_dead_letter_after_max_deliveries_and_redrive(client: LineClient, stream_name: str) -> None:
    stream = client.call("create_stream", {"stream_name": stream_name, "max_deliveries": 2})["stream"]
    assert stream["max_deliveries"] == 2
    event = client.call("write_event", {"stream_name": stream_name, "event": "poison"})["event"]
    for delivery in (1, 2):
        leased = client.call("process_events", {"stream_name": stream_name, "lease_seconds": 1})["events"]
        assert [(e["id"], e["deliveries"]) for e in leased] == [(event["id"], delivery)]
        time.sleep(1.1)
    # The second lease ran out: the event is dead, whether the sweeper or the
    # next lease gets there first.
    assert client.call("process_events", {"stream_name": stream_name, "lease_seconds": 1})["events"] == []
    assert client.call("process_events", {"stream_name": stream_name})["events"] == []
    assert client.call("retry_events", {"stream_name": stream_name})["events"] == []
    stored = client.call("get_stream_events", {"stream_name": stream_name})["events"]
    assert [(e["id"], e["status"]) for e in stored] == [(event["id"], 3)]
    assert client.call("get_stream_info", {"stream_name": stream_name})["stats"]["dead"] == 1
    client.call("mark_event", {"event_id": event["id"], "status": 0})
    back = client.call("process_events", {"stream_name": stream_name})["events"]
    assert [(e["id"], e["deliveries"]) for e in back] == [(event["id"], 0)]


def test_consumer_can_dead_letter_directly(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    event = client.call("write_event", {"stream_name": stream_name, "event": 1})["event"]
    client.call("mark_event", {"event_id": event["id"], "status": 3})
    assert client.call("process_events", {"stream_name": stream_name})["events"] == []
    assert client.call("get_stream_events", {"stream_name": stream_name})["events"][0]["status"] == 3


# -- 7.6 idempotent writes ---------------------------------------------------------------------


def test_idempotent_write_returns_first_event(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    first = client.call("write_event", {"stream_name": stream_name, "event": {"v": 1}, "key": "order-1"})
    assert "duplicate" not in first
    again = client.call("write_event", {"stream_name": stream_name, "event": {"v": 2}, "key": "order-1"})
    assert again["duplicate"] is True and again["event"]["id"] == first["event"]["id"]
    assert again["event"]["body"] == {"v": 1}
    other = client.call("write_event", {"stream_name": stream_name, "event": {"v": 3}, "key": "order-2"})
    assert other["event"]["id"] != first["event"]["id"]
    assert len(client.call("get_stream_events", {"stream_name": stream_name})["events"]) == 2


def test_idempotent_keys_pipelined_in_one_commit(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    for i in range(20):
        client.send(
            {
                "operation": "write_event",
                "auth": DEFAULT_AUTH,
                "body": {"stream_name": stream_name, "event": i, "key": "same"},
            }
        )
    responses = [client.read() for _ in range(20)]
    ids = {r["body"]["event"]["id"] for r in responses}
    assert len(ids) == 1
    assert sum(1 for r in responses if r["body"].get("duplicate")) == 19
    assert len(client.call("get_stream_events", {"stream_name": stream_name})["events"]) == 1


# -- 7.7 stats and retention ----------------------------------------------------------------------


def test_stats_count_every_state(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    ids = [e["id"] for e in _write_n(client, stream_name, 10)]
    client.call("mark_events", {"event_ids": ids[:3], "status": 1})
    client.call("mark_events", {"event_ids": ids[3:5], "status": 2})
    client.call("mark_event", {"event_id": ids[5], "status": 3})
    client.call("process_events", {"stream_name": stream_name, "limit": 2, "lease_seconds": 60})
    info = client.call("get_stream_info", {"stream_name": stream_name})
    assert info["stream"]["name"] == stream_name
    assert info["stats"] == {
        "unprocessed": 4,
        "processed": 3,
        "retry": 2,
        "dead": 1,
        "leased": 2,
        "total": 10,
    }


def test_stream_retention_purges_old_events(client: LineClient, stream_name: str) -> None:
    stream = client.call("create_stream", {"stream_name": stream_name, "retention_seconds": 1})["stream"]
    assert stream["retention_seconds"] == 1
    _write_n(client, stream_name, 3)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if not client.call("get_stream_events", {"stream_name": stream_name})["events"]:
            break
        time.sleep(0.2)
    assert client.call("get_stream_events", {"stream_name": stream_name})["events"] == []
    assert client.call("get_stream_info", {"stream_name": stream_name})["stats"]["total"] == 0


def test_mark_events_settles_a_leased_page_under_its_lease(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    _write_n(client, stream_name, 3)
    page = client.call("process_events", {"stream_name": stream_name, "lease_seconds": 60})["events"]
    lease_ids = {e["lease_id"] for e in page}
    assert len(page) == 3 and len(lease_ids) == 1
    marked = client.call(
        "mark_events", {"event_ids": [e["id"] for e in page], "status": 1, "lease_id": lease_ids.pop()}
    )
    assert marked == {"marked": 3, "not_found": [], "lease_lost": []}


def test_lease_starts_when_granted_not_when_queued(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    client.call("create_stream", {"stream_name": stream_name + "-empty"})
    _write_n(client, stream_name, 1)
    # The leasing request waits behind a 1.5 s long poll on the same connection.
    client.send(
        {
            "operation": "process_events",
            "auth": DEFAULT_AUTH,
            "body": {"stream_name": stream_name + "-empty", "wait_seconds": 1.5},
        }
    )
    client.send(
        {
            "operation": "process_events",
            "auth": DEFAULT_AUTH,
            "body": {"stream_name": stream_name, "lease_seconds": 1},
        }
    )
    assert client.read()["body"]["events"] == []
    leased = client.read()["body"]["events"]
    assert len(leased) == 1
    # Granted after the wait, so it still holds: nobody else can take it yet.
    assert client.call("process_events", {"stream_name": stream_name, "lease_seconds": 1})["events"] == []


def test_seq_is_never_handed_out_twice(client: LineClient, stream_name: str) -> None:
    doomed = stream_name + "-doomed"
    client.call("create_stream", {"stream_name": stream_name})
    client.call("create_stream", {"stream_name": doomed})
    highest = client.call("write_events", {"stream_name": doomed, "events": [1, 2, 3]})["events"][-1]["seq"]
    client.call("delete_stream", {"stream_name": doomed})  # the newest events go
    after = client.call("write_event", {"stream_name": stream_name, "event": 4})["event"]["seq"]
    assert after > highest
