"""The ten original operations over real TCP (PROTOCOL.md section 5)."""

from __future__ import annotations

import uuid

from tests.busclient import LineClient


def test_health_needs_no_auth(client: LineClient) -> None:
    assert client.request("health", auth=None) == {"operation": "health", "status": True}


def test_create_stream_returns_stream(client: LineClient, stream_name: str) -> None:
    body = client.call("create_stream", {"stream_name": stream_name})
    stream = body["stream"]
    assert stream["name"] == stream_name
    assert uuid.UUID(stream["id"])
    assert stream["created_at"].endswith("Z") and len(stream["created_at"]) == 27


def test_create_existing_stream_fails(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    response = client.request("create_stream", {"stream_name": stream_name})
    assert response == {
        "operation": "create_stream",
        "status": False,
        "reason": f"stream: '{stream_name}' already exists",
        "code": "stream_exists",
    }


def test_write_and_read_back_in_order(client: LineClient, stream_name: str) -> None:
    stream = client.call("create_stream", {"stream_name": stream_name})["stream"]
    values = [{"e": 1}, [1, 2, "ü"], "text", 3.5, True, False, 0, {"nested": {"a": [None]}}]
    written = [client.call("write_event", {"stream_name": stream_name, "event": v})["event"] for v in values]
    for event, value in zip(written, values):
        assert event["body"] == value
        assert event["status"] == 0
        assert event["stream_id"] == stream["id"]
    events = client.call("get_stream_events", {"stream_name": stream_name})["events"]
    assert [e["body"] for e in events] == values
    assert [e["id"] for e in events] == [e["id"] for e in written]
    seqs = [e["seq"] for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)


def test_process_retry_and_mark(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    ids = [
        client.call("write_event", {"stream_name": stream_name, "event": {"n": n}})["event"]["id"]
        for n in range(3)
    ]
    assert [e["id"] for e in client.call("process_events", {"stream_name": stream_name})["events"]] == ids
    assert client.call("mark_event", {"event_id": ids[0], "status": 1}) is None
    assert client.call("mark_event", {"event_id": ids[1], "status": 2}) is None
    unprocessed = client.call("process_events", {"stream_name": stream_name})["events"]
    assert [e["id"] for e in unprocessed] == [ids[2]]
    retry = client.call("retry_events", {"stream_name": stream_name})["events"]
    assert [(e["id"], e["status"]) for e in retry] == [(ids[1], 2)]
    statuses = {
        e["id"]: e["status"] for e in client.call("get_stream_events", {"stream_name": stream_name})["events"]
    }
    assert statuses == {ids[0]: 1, ids[1]: 2, ids[2]: 0}


def test_delete_stream_removes_events(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    event = client.call("write_event", {"stream_name": stream_name, "event": 1})["event"]
    assert client.call("delete_stream", {"stream_name": stream_name}) is None
    response = client.request("get_stream_info", {"stream_name": stream_name})
    assert response["code"] == "stream_not_found"
    assert response["reason"] == f"stream '{stream_name}' not found"
    response = client.request("mark_event", {"event_id": event["id"], "status": 1})
    assert response["code"] == "event_not_found"
    assert response["reason"] == f"event '{event['id']}' not found"


def test_exit_answers_then_closes(client: LineClient) -> None:
    assert client.request("exit", auth=None) == {"operation": "exit", "status": True}
    assert client.is_closed()


def test_integers_keep_their_value_up_to_64_bits(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    values = [2**64 - 1, -(2**63), 9007199254740993]
    event = client.call("write_event", {"stream_name": stream_name, "event": values})["event"]
    assert event["body"] == values
    stored = client.call("get_stream_events", {"stream_name": stream_name})["events"]
    assert stored[0]["body"] == values


def test_integer_beyond_64_bits_is_refused_not_rounded(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    response = client.request("write_event", {"stream_name": stream_name, "event": {"n": 2**64}})
    assert response["code"] == "invalid_json" and response["operation"] == "decode_request"
    # Long digit runs inside strings are only text.
    client.call("write_event", {"stream_name": stream_name, "event": {"n": "1" * 40}})
    stored = client.call("get_stream_events", {"stream_name": stream_name})["events"]
    assert [e["body"] for e in stored] == [{"n": "1" * 40}]


def test_key_with_nul_is_refused_on_every_backend(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    response = client.request("write_event", {"stream_name": stream_name, "event": 1, "key": "a\x00b"})
    assert response["code"] == "invalid_field" and "key" in response["reason"]
    assert client.call("get_stream_events", {"stream_name": stream_name})["events"] == []


def test_deep_nesting_with_long_numbers_is_invalid_json(client: LineClient) -> None:
    line = b'{"operation": "health", "x": ' + b"[" * 1000 + b"1234567890123456789" + b"]" * 1000 + b"}\n"
    client.send_raw(line)
    assert client.read()["code"] == "invalid_json"
    assert client.request("health", auth=None)["status"] is True
