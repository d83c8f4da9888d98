"""Every error path of PROTOCOL.md section 6, against the real server over TCP.

Each error is checked to the exact response (reason, code, context), the
connection is checked to still answer afterwards, and bad input is checked
to have changed nothing.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from tests.busclient import DEFAULT_AUTH, LineClient
from tests.servers import ServerProcess

ORIGINAL_OPERATIONS = (
    "health",
    "create_stream",
    "delete_stream",
    "get_stream_info",
    "get_stream_events",
    "write_event",
    "process_events",
    "retry_events",
    "mark_event",
    "exit",
)
EXTENSION_OPERATIONS = ("write_events", "mark_events", "list_streams")
UNKNOWN_REASON = "operation must be one of: " + ", ".join(
    f"'{name}'" for name in ORIGINAL_OPERATIONS + EXTENSION_OPERATIONS
)
INVALID_JSON = {
    "operation": "decode_request",
    "status": False,
    "reason": "invalid json provided",
    "code": "invalid_json",
}
UNKNOWN_OPERATION = {
    "operation": "decode_request",
    "status": False,
    "reason": UNKNOWN_REASON,
    "code": "unknown_operation",
}
STATUS_REASON = "status must be one of: 0 - unprocessed, 1 - processed, 2 - retry, 3 - dead"

_STREAM = {"name": "stream_name", "type": "string", "required": True}
#: The ``context`` of missing_fields for each operation that has fields.
CONTEXTS: dict[str, list[dict[str, Any]]] = {
    "create_stream": [_STREAM],
    "delete_stream": [_STREAM],
    "get_stream_info": [_STREAM],
    "get_stream_events": [_STREAM],
    "write_event": [_STREAM, {"name": "event", "type": "[]byte", "required": True}],
    "process_events": [_STREAM],
    "retry_events": [_STREAM],
    "mark_event": [
        {"name": "event_id", "type": "string", "required": True},
        {"name": "status", "type": "uint8", "required": True},
    ],
    "write_events": [_STREAM, {"name": "events", "type": "[]json", "required": True}],
    "mark_events": [
        {"name": "event_ids", "type": "[]string", "required": True},
        {"name": "status", "type": "uint8", "required": True},
    ],
}
#: A valid body for each operation that needs one (stream "s", event "e").
VALID_BODIES: dict[str, dict[str, Any]] = {
    "create_stream": {"stream_name": "s"},
    "delete_stream": {"stream_name": "s"},
    "get_stream_info": {"stream_name": "s"},
    "get_stream_events": {"stream_name": "s"},
    "write_event": {"stream_name": "s", "event": {"a": 1}},
    "process_events": {"stream_name": "s"},
    "retry_events": {"stream_name": "s"},
    "mark_event": {"event_id": "e", "status": 1},
    "write_events": {"stream_name": "s", "events": [1]},
    "mark_events": {"event_ids": ["e"], "status": 1},
}
AUTHED_OPERATIONS = tuple(
    op for op in ORIGINAL_OPERATIONS + EXTENSION_OPERATIONS if op not in ("health", "exit")
)


_sources = itertools.count()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[LineClient]:
    """A connection from a loopback address of this test's own.

    The server slows down the answers to repeated auth failures from one
    address (auth.FailureThrottle); this file fails auth on purpose, a few
    times per test but hundreds of times in all.
    """
    n = next(_sources)
    with LineClient(server.port, source=f"127.0.{1 + n // 250 % 250}.{1 + n % 250}") as c:
        yield c


def failure(operation: str, code: str, reason: str) -> dict[str, Any]:
    return {"operation": operation, "status": False, "reason": reason, "code": code}


def missing(operation: str) -> dict[str, Any]:
    return {
        **failure(operation, "missing_fields", "missing required fields"),
        "context": {"body": CONTEXTS[operation]},
    }


def unauthorized(operation: str) -> dict[str, Any]:
    return failure(operation, "unauthorized", "unauthorized to make request")


def line(request: dict[str, Any]) -> bytes:
    return json.dumps(request).encode() + b"\n"


def exchange(client: LineClient, data: bytes) -> dict[str, Any]:
    """Send one raw request line, read its response, and check the connection
    still answers: no error may cost the client its connection."""
    client.send_raw(data)
    response = json.loads(client.read_line())
    client.send_raw(b'{"operation": "health"}\n')
    assert client.read() == {"operation": "health", "status": True}, "connection unusable after an error"
    return response


def ask(client: LineClient, operation: Any, body: Any = None, auth: Any = DEFAULT_AUTH, **extra: Any) -> dict:
    request: dict[str, Any] = {"operation": operation}
    if auth is not None:
        request["auth"] = auth
    if body is not None:
        request["body"] = body
    request.update(extra)
    return exchange(client, line(request))


# -- invalid_json -----------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b'{"operation": "health"',
        b"{'operation': 'health'}",
        b'{"operation": "health"} trailing',
        b'{"operation": "health",}',
        b"{",
        b"\x00",
    ],
    ids=repr,
)
def test_bad_json(client: LineClient, raw: bytes) -> None:
    assert exchange(client, raw + b"\n") == INVALID_JSON


@pytest.mark.parametrize("raw", [b"[]", b'["health"]', b'"health"', b"1", b"null", b"true", b"1.5"], ids=repr)
def test_json_that_is_not_an_object(client: LineClient, raw: bytes) -> None:
    assert exchange(client, raw + b"\n") == INVALID_JSON


@pytest.mark.parametrize(
    "raw",
    [
        b'{"operation": "\xff"}',
        b"\xff\xfe{}",
        '{"operation": "health", "x": "é"}'.encode("latin-1"),
        b'{"operation": "health", "x": "\xed\xa0\x80"}',  # an encoded surrogate
    ],
    ids=repr,
)
def test_non_utf8_bytes(client: LineClient, raw: bytes) -> None:
    assert exchange(client, raw + b"\n") == INVALID_JSON


# -- unknown_operation ----------------------------------------------------------


@pytest.mark.parametrize(
    "operation",
    [
        "",
        "nope",
        "HEALTH",
        "Health",
        " health",
        "health ",
        "write-event",
        "decode_request",
        5,
        True,
        None,
        ["health"],
        {"name": "health"},
    ],
    ids=repr,
)
def test_unknown_operation(client: LineClient, operation: Any) -> None:
    assert ask(client, operation, auth=None) == UNKNOWN_OPERATION


def test_request_without_operation(client: LineClient) -> None:
    assert exchange(client, line({"auth": DEFAULT_AUTH, "body": {"stream_name": "x"}})) == UNKNOWN_OPERATION
    assert exchange(client, b"{}\n") == UNKNOWN_OPERATION


def test_unknown_operation_reason_lists_every_operation_in_order(client: LineClient) -> None:
    """The original ten in the original's order, then the extensions."""
    reason = ask(client, "nope")["reason"]
    assert reason == UNKNOWN_REASON
    assert reason.startswith(
        "operation must be one of: 'health', 'create_stream', 'delete_stream', 'get_stream_info', "
        "'get_stream_events', 'write_event', 'process_events', 'retry_events', 'mark_event', 'exit'"
    )


# -- unauthorized --------------------------------------------------------------------


@pytest.mark.parametrize("operation", AUTHED_OPERATIONS)
def test_no_auth(client: LineClient, operation: str) -> None:
    assert ask(client, operation, VALID_BODIES.get(operation, {}), auth=None) == unauthorized(operation)


@pytest.mark.parametrize(
    "auth",
    [
        {"client_id": "dope_go_client_id", "client_secret": "wrong"},
        {"client_id": "dope_go_client_id", "client_secret": ""},
        {"client_id": "dope_go_client_id", "client_secret": "dope_go_client_secret "},
        {"client_id": "nobody", "client_secret": "dope_go_client_secret"},
        {"client_id": "", "client_secret": ""},
        # Both known, but not each other's.
        {"client_id": "dope_go_client_id", "client_secret": "dope_expenses_rest_api_client_secret"},
        {"client_id": "dope_go_client_id"},
        {"client_secret": "dope_go_client_secret"},
        {},
        None,
        "dope_go_client_id:dope_go_client_secret",
        ["dope_go_client_id", "dope_go_client_secret"],
        5,
        True,
        {"client_id": 5, "client_secret": "dope_go_client_secret"},
        {"client_id": "dope_go_client_id", "client_secret": 5},
        {"client_id": ["dope_go_client_id"], "client_secret": "dope_go_client_secret"},
        {"client_id": "dope_go_client_id", "client_secret": {"s": "dope_go_client_secret"}},
        {"client_id": None, "client_secret": None},
    ],
    ids=repr,
)
def test_bad_auth(client: LineClient, auth: Any) -> None:
    request = {"operation": "get_stream_info", "auth": auth, "body": {"stream_name": "x"}}
    assert exchange(client, line(request)) == unauthorized("get_stream_info")


def test_other_configured_client_is_accepted(client: LineClient, stream_name: str) -> None:
    other = {
        "client_id": "dope_expenses_rest_api_client_id",
        "client_secret": "dope_expenses_rest_api_client_secret",
    }
    assert ask(client, "create_stream", {"stream_name": stream_name}, auth=other)["status"] is True


@pytest.mark.parametrize("operation", ["health", "exit"])
@pytest.mark.parametrize("auth", [{"client_id": "nobody", "client_secret": "x"}, "junk", 5])
def test_health_and_exit_ignore_auth(client: LineClient, operation: str, auth: Any) -> None:
    client.send({"operation": operation, "auth": auth, "body": "anything"})
    assert client.read() == {"operation": operation, "status": True}


# -- missing_fields -----------------------------------------------------------------


@pytest.mark.parametrize("operation", sorted(CONTEXTS))
def test_body_absent(client: LineClient, operation: str) -> None:
    assert ask(client, operation) == missing(operation)


@pytest.mark.parametrize("operation", sorted(CONTEXTS))
@pytest.mark.parametrize("body", [[], ["s"], "s", 5, True, {}], ids=repr)
def test_body_not_an_object_or_empty(client: LineClient, operation: str, body: Any) -> None:
    assert ask(client, operation, body) == missing(operation)


def test_body_null(client: LineClient) -> None:
    request = {"operation": "create_stream", "auth": DEFAULT_AUTH, "body": None}
    assert exchange(client, line(request)) == missing("create_stream")


_REQUIRED = [(op, field["name"]) for op, fields in sorted(CONTEXTS.items()) for field in fields]


@pytest.mark.parametrize(("operation", "field"), _REQUIRED)
def test_required_field_missing(client: LineClient, operation: str, field: str) -> None:
    body = dict(VALID_BODIES[operation])
    del body[field]
    assert ask(client, operation, body) == missing(operation)


@pytest.mark.parametrize(("operation", "field"), _REQUIRED)
def test_required_field_null(client: LineClient, operation: str, field: str) -> None:
    body = {**VALID_BODIES[operation], field: None}
    assert ask(client, operation, body) == missing(operation)


def test_missing_fields_beats_invalid_field(client: LineClient) -> None:
    """The body is checked for completeness before any field's value."""
    assert ask(client, "write_event", {"stream_name": 5}) == missing("write_event")
    assert ask(client, "mark_event", {"status": 9}) == missing("mark_event")


def test_optional_fields_may_be_null(client: LineClient, stream_name: str) -> None:
    body = {"stream_name": stream_name, "max_deliveries": None, "retention_seconds": None}
    assert ask(client, "create_stream", body)["status"] is True
    body = {
        "stream_name": stream_name,
        "limit": None,
        "after_seq": None,
        "lease_seconds": None,
        "wait_seconds": None,
    }
    assert ask(client, "process_events", body) == {
        "operation": "process_events",
        "status": True,
        "body": {"events": [], "next_after_seq": None},
    }


# -- invalid_field -------------------------------------------------------------------

_BAD_STREAM_NAMES = [
    5,
    True,
    1.5,
    ["s"],
    {"name": "s"},
    "",
    "x" * 256,
    "a\x00b",
    "a\nb",
    "tab\there",
    "cr\r",
    "del\x7f",
    "c1\x85",
    "\x1b[31mred",
]
_STREAM_OPERATIONS = [op for op, fields in CONTEXTS.items() if fields[0]["name"] == "stream_name"]


@pytest.mark.parametrize("name", _BAD_STREAM_NAMES, ids=repr)
def test_invalid_stream_name_on_create(client: LineClient, name: Any) -> None:
    response = ask(client, "create_stream", {"stream_name": name})
    assert response["code"] == "invalid_field", response
    assert "stream_name" in response["reason"]
    assert set(response) == {"operation", "status", "reason", "code"}
    assert response["operation"] == "create_stream" and response["status"] is False


@pytest.mark.parametrize("operation", _STREAM_OPERATIONS)
@pytest.mark.parametrize("name", ["", "x" * 256, "a\x01b", 7], ids=repr)
def test_invalid_stream_name_on_every_stream_operation(client: LineClient, operation: str, name: Any) -> None:
    response = ask(client, operation, {**VALID_BODIES[operation], "stream_name": name})
    assert (response["operation"], response["status"], response["code"]) == (
        operation,
        False,
        "invalid_field",
    )
    assert "stream_name" in response["reason"]


@pytest.mark.parametrize("name", ["x" * 255, "ü" * 255, "名前 with spaces", "a/b.c:d", "🙂"], ids=len)
def test_valid_edge_stream_names(client: LineClient, name: str) -> None:
    """1 to 255 characters, unicode welcome: counted in characters, not bytes."""
    ask(client, "delete_stream", {"stream_name": name})  # a rerun may find it
    stream = ask(client, "create_stream", {"stream_name": name})["body"]["stream"]
    assert stream["name"] == name
    assert ask(client, "get_stream_info", {"stream_name": name})["body"]["stream"] == stream
    assert ask(client, "delete_stream", {"stream_name": name}) == {
        "operation": "delete_stream",
        "status": True,
    }


INVALID_FIELDS: list[tuple[str, dict[str, Any], str]] = [
    ("mark_event", {"event_id": 5, "status": 1}, "event_id"),
    ("mark_event", {"event_id": "", "status": 1}, "event_id"),
    ("mark_event", {"event_id": ["e"], "status": 1}, "event_id"),
    ("mark_event", {"event_id": True, "status": 1}, "event_id"),
    ("mark_event", {"event_id": "e", "status": "1"}, "status"),
    ("mark_event", {"event_id": "e", "status": 1.0}, "status"),
    ("mark_event", {"event_id": "e", "status": 1.5}, "status"),
    ("mark_event", {"event_id": "e", "status": True}, "status"),
    ("mark_event", {"event_id": "e", "status": [1]}, "status"),
    ("mark_event", {"event_id": "e", "status": 1, "lease_id": 5}, "lease_id"),
    ("mark_event", {"event_id": "e", "status": 1, "lease_id": ""}, "lease_id"),
    ("get_stream_events", {"stream_name": "s", "limit": 0}, "limit"),
    ("get_stream_events", {"stream_name": "s", "limit": -1}, "limit"),
    ("get_stream_events", {"stream_name": "s", "limit": 10_001}, "limit"),
    ("get_stream_events", {"stream_name": "s", "limit": "5"}, "limit"),
    ("get_stream_events", {"stream_name": "s", "limit": 1.5}, "limit"),
    ("get_stream_events", {"stream_name": "s", "limit": True}, "limit"),
    ("get_stream_events", {"stream_name": "s", "after_seq": -1}, "after_seq"),
    ("get_stream_events", {"stream_name": "s", "after_seq": "0"}, "after_seq"),
    ("get_stream_events", {"stream_name": "s", "after_seq": 2**63}, "after_seq"),
    ("get_stream_events", {"stream_name": "s", "after_seq": 2**64 - 1}, "after_seq"),
    ("process_events", {"stream_name": "s", "limit": 0}, "limit"),
    ("process_events", {"stream_name": "s", "after_seq": 2**63}, "after_seq"),
    ("process_events", {"stream_name": "s", "lease_seconds": 0}, "lease_seconds"),
    ("process_events", {"stream_name": "s", "lease_seconds": 43_201}, "lease_seconds"),
    ("process_events", {"stream_name": "s", "lease_seconds": "5"}, "lease_seconds"),
    ("process_events", {"stream_name": "s", "wait_seconds": -1}, "wait_seconds"),
    ("process_events", {"stream_name": "s", "wait_seconds": 31}, "wait_seconds"),
    ("process_events", {"stream_name": "s", "wait_seconds": "1"}, "wait_seconds"),
    ("process_events", {"stream_name": "s", "wait_seconds": True}, "wait_seconds"),
    ("retry_events", {"stream_name": "s", "limit": 10_001}, "limit"),
    ("retry_events", {"stream_name": "s", "after_seq": 2**63, "lease_seconds": 5}, "after_seq"),
    ("retry_events", {"stream_name": "s", "lease_seconds": -5}, "lease_seconds"),
    ("retry_events", {"stream_name": "s", "wait_seconds": 30.5}, "wait_seconds"),
    ("create_stream", {"stream_name": "s", "max_deliveries": 0}, "max_deliveries"),
    ("create_stream", {"stream_name": "s", "max_deliveries": "3"}, "max_deliveries"),
    ("create_stream", {"stream_name": "s", "retention_seconds": 0}, "retention_seconds"),
    ("create_stream", {"stream_name": "s", "retention_seconds": -1}, "retention_seconds"),
    ("write_event", {"stream_name": "s", "event": 1, "key": ""}, "key"),
    ("write_event", {"stream_name": "s", "event": 1, "key": "k" * 256}, "key"),
    ("write_event", {"stream_name": "s", "event": 1, "key": 5}, "key"),
    ("write_events", {"stream_name": "s", "events": []}, "events"),
    ("write_events", {"stream_name": "s", "events": [1, None]}, "events"),
    ("write_events", {"stream_name": "s", "events": list(range(1001))}, "events"),
    ("write_events", {"stream_name": "s", "events": {"a": 1}}, "events"),
    ("write_events", {"stream_name": "s", "events": "abc"}, "events"),
    ("mark_events", {"event_ids": [], "status": 1}, "event_ids"),
    ("mark_events", {"event_ids": [5], "status": 1}, "event_ids"),
    ("mark_events", {"event_ids": [""], "status": 1}, "event_ids"),
    ("mark_events", {"event_ids": "e", "status": 1}, "event_ids"),
    ("mark_events", {"event_ids": ["e"], "status": "1"}, "status"),
]


@pytest.mark.parametrize(("operation", "body", "field"), INVALID_FIELDS, ids=lambda v: repr(v)[:60])
def test_invalid_field(client: LineClient, operation: str, body: dict[str, Any], field: str) -> None:
    """Wrong types and out-of-range numbers: invalid_field naming the field."""
    response = ask(client, operation, body)
    assert (response["operation"], response["status"], response["code"]) == (
        operation,
        False,
        "invalid_field",
    )
    assert field in response["reason"], response
    assert set(response) == {"operation", "status", "reason", "code"}


def test_large_after_seq_on_a_real_stream(client: LineClient, stream_name: str) -> None:
    """Past the storage's integer range is a client error, not a storage fault."""
    client.call("create_stream", {"stream_name": stream_name})
    client.call("write_event", {"stream_name": stream_name, "event": 1})
    for operation, extra in [
        ("get_stream_events", {}),
        ("process_events", {}),
        ("process_events", {"lease_seconds": 5}),
    ]:
        response = ask(client, operation, {"stream_name": stream_name, "after_seq": 2**63, **extra})
        assert response["code"] == "invalid_field", response
    largest = ask(client, "get_stream_events", {"stream_name": stream_name, "after_seq": 2**63 - 1})
    assert largest["body"] == {"events": [], "next_after_seq": None}


# -- invalid_status ---------------------------------------------------------------------


@pytest.mark.parametrize("status", [4, -1, 256, 5, 255, 2**63, 2**64 - 1])
def test_invalid_status(client: LineClient, status: int) -> None:
    assert ask(client, "mark_event", {"event_id": str(uuid.uuid4()), "status": status}) == failure(
        "mark_event", "invalid_status", STATUS_REASON
    )


def test_invalid_status_on_mark_events(client: LineClient) -> None:
    assert ask(client, "mark_events", {"event_ids": [str(uuid.uuid4())], "status": 4}) == failure(
        "mark_events", "invalid_status", STATUS_REASON
    )


def test_invalid_status_changes_nothing(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    event = client.call("write_event", {"stream_name": stream_name, "event": "x"})["event"]
    for status in (4, -1, 256):
        response = ask(client, "mark_event", {"event_id": event["id"], "status": status})
        assert response == failure("mark_event", "invalid_status", STATUS_REASON)
    events = client.call("get_stream_events", {"stream_name": stream_name})["events"]
    assert [(e["id"], e["status"]) for e in events] == [(event["id"], 0)]


# -- the order of checks ---------------------------------------------------------------------


ORDER_CASES: list[tuple[str, bytes, dict[str, Any]]] = [
    # Bad JSON beats everything.
    ("bad json, unknown op, bad auth", b'{"operation": "nope", "auth": 5', INVALID_JSON),
    ("bad json, valid-looking start", b'{"operation": "create_stream", "auth": {}} x', INVALID_JSON),
    ("not an object", b'[{"operation": "health"}]', INVALID_JSON),
    # Unknown operation beats bad auth and a bad body.
    (
        "unknown op, bad auth",
        line({"operation": "nope", "auth": {"client_id": "x"}, "body": 5}),
        UNKNOWN_OPERATION,
    ),
    (
        "unknown op, no auth",
        line({"operation": "create_streams", "body": {"stream_name": ""}}),
        UNKNOWN_OPERATION,
    ),
    # Bad auth beats a missing or invalid body.
    (
        "bad auth, no body",
        line({"operation": "create_stream", "auth": {"client_id": "x"}}),
        unauthorized("create_stream"),
    ),
    ("bad auth, bad body", line({"operation": "write_event", "body": 5}), unauthorized("write_event")),
    (
        "bad auth, invalid field",
        line({"operation": "create_stream", "auth": None, "body": {"stream_name": ""}}),
        unauthorized("create_stream"),
    ),
    (
        "bad auth, invalid status",
        line({"operation": "mark_event", "auth": {}, "body": {"event_id": "e", "status": 9}}),
        unauthorized("mark_event"),
    ),
    # A missing field beats an invalid one.
    (
        "missing beats invalid",
        line({"operation": "write_event", "auth": DEFAULT_AUTH, "body": {"stream_name": ""}}),
        missing("write_event"),
    ),
    # The body is checked before the operation runs.
    (
        "invalid field beats stream_not_found",
        line({"operation": "delete_stream", "auth": DEFAULT_AUTH, "body": {"stream_name": "\x00"}}),
        None,  # invalid_field: reason checked loosely below
    ),
    (
        "invalid status beats event_not_found",
        line({"operation": "mark_event", "auth": DEFAULT_AUTH, "body": {"event_id": "nope", "status": 4}}),
        failure("mark_event", "invalid_status", STATUS_REASON),
    ),
]


@pytest.mark.parametrize(("case", "raw", "expected"), ORDER_CASES, ids=[c[0] for c in ORDER_CASES])
def test_order_of_checks(client: LineClient, case: str, raw: bytes, expected: dict[str, Any] | None) -> None:
    response = exchange(client, raw + b"\n" if not raw.endswith(b"\n") else raw)
    if expected is None:
        assert response["code"] == "invalid_field", response
    else:
        assert response == expected


# -- stream_not_found, event_not_found, stream_exists -------------------------------------------

NOT_FOUND_REQUESTS: list[tuple[str, dict[str, Any]]] = [
    ("delete_stream", {}),
    ("get_stream_info", {}),
    ("get_stream_events", {}),
    ("get_stream_events", {"limit": 5, "after_seq": 3}),
    ("write_event", {"event": {"a": 1}}),
    ("write_event", {"event": {"a": 1}, "key": "k"}),
    ("write_events", {"events": [1, 2]}),
    ("process_events", {}),
    ("process_events", {"lease_seconds": 30}),
    ("process_events", {"wait_seconds": 5}),
    ("retry_events", {}),
    ("retry_events", {"lease_seconds": 30}),
    ("retry_events", {"wait_seconds": 5}),
]


@pytest.mark.parametrize(("operation", "extra"), NOT_FOUND_REQUESTS, ids=lambda v: repr(v)[:40])
def test_stream_not_found(
    client: LineClient, stream_name: str, operation: str, extra: dict[str, Any]
) -> None:
    response = ask(client, operation, {"stream_name": stream_name, **extra})
    assert response == failure(operation, "stream_not_found", f"stream '{stream_name}' not found")


def test_stream_not_found_creates_nothing(client: LineClient, stream_name: str) -> None:
    for operation, extra in NOT_FOUND_REQUESTS:
        ask(client, operation, {"stream_name": stream_name, **extra})
    names = [s["name"] for s in client.call("list_streams")["streams"]]
    assert stream_name not in names


def test_stream_not_found_after_delete(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    client.call("write_event", {"stream_name": stream_name, "event": 1})
    client.call("delete_stream", {"stream_name": stream_name})
    for operation, extra in NOT_FOUND_REQUESTS:
        response = ask(client, operation, {"stream_name": stream_name, **extra})
        assert response == failure(operation, "stream_not_found", f"stream '{stream_name}' not found")


@pytest.mark.parametrize(
    "event_id",
    [str(uuid.uuid4()), "not-a-uuid", "x" * 300, "'quoted'", "1b78ca67-d916-4059-a299-1ebf49664eb2"],
)
def test_event_not_found(client: LineClient, event_id: str) -> None:
    for status in (0, 1, 2, 3):
        assert ask(client, "mark_event", {"event_id": event_id, "status": status}) == failure(
            "mark_event", "event_not_found", f"event '{event_id}' not found"
        )


def test_event_not_found_with_lease_id(client: LineClient) -> None:
    event_id = str(uuid.uuid4())
    body = {"event_id": event_id, "status": 1, "lease_id": str(uuid.uuid4())}
    assert ask(client, "mark_event", body) == failure(
        "mark_event", "event_not_found", f"event '{event_id}' not found"
    )


def test_mark_events_reports_unknown_ids(client: LineClient, stream_name: str) -> None:
    """The batch form does not fail: it marks what exists and lists the rest."""
    client.call("create_stream", {"stream_name": stream_name})
    known = client.call("write_event", {"stream_name": stream_name, "event": 1})["event"]["id"]
    unknown = str(uuid.uuid4())
    body = client.call("mark_events", {"event_ids": [unknown, known], "status": 1})
    assert body["marked"] == 1
    assert body["not_found"] == [unknown]


def test_stream_exists_keeps_the_first(client: LineClient, stream_name: str) -> None:
    first = client.call("create_stream", {"stream_name": stream_name})["stream"]
    event = client.call("write_event", {"stream_name": stream_name, "event": "kept"})["event"]
    assert ask(client, "create_stream", {"stream_name": stream_name}) == failure(
        "create_stream", "stream_exists", f"stream: '{stream_name}' already exists"
    )
    assert client.call("get_stream_info", {"stream_name": stream_name})["stream"] == first
    assert client.call("get_stream_events", {"stream_name": stream_name})["events"][0]["id"] == event["id"]


# -- bad input changes nothing -------------------------------------------------------------------


def test_rejected_requests_change_nothing(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    ids = [
        e["id"]
        for e in client.call("write_events", {"stream_name": stream_name, "events": [1, 2, 3]})["events"]
    ]
    client.call("mark_event", {"event_id": ids[1], "status": 2})
    before = client.call("get_stream_events", {"stream_name": stream_name})
    info_before = client.call("get_stream_info", {"stream_name": stream_name})
    wrong = {"client_id": "dope_go_client_id", "client_secret": "nope"}
    rejected: list[tuple[str, Any, Any]] = [
        ("write_event", {"stream_name": stream_name, "event": 4}, wrong),
        ("write_event", {"stream_name": stream_name, "event": None}, DEFAULT_AUTH),
        ("write_event", {"stream_name": stream_name, "event": 4, "key": ""}, DEFAULT_AUTH),
        ("write_events", {"stream_name": stream_name, "events": [4, None, 5]}, DEFAULT_AUTH),
        ("write_events", {"stream_name": stream_name, "events": list(range(1001))}, DEFAULT_AUTH),
        ("write_events", {"stream_name": stream_name, "events": [4]}, None),
        ("mark_event", {"event_id": ids[0], "status": 4}, DEFAULT_AUTH),
        ("mark_event", {"event_id": ids[0], "status": "1"}, DEFAULT_AUTH),
        ("mark_event", {"event_id": ids[0], "status": 1}, wrong),
        ("mark_event", {"event_id": ids[0]}, DEFAULT_AUTH),
        ("mark_events", {"event_ids": ids, "status": -1}, DEFAULT_AUTH),
        ("mark_events", {"event_ids": [*ids, 5], "status": 1}, DEFAULT_AUTH),
        ("delete_stream", {"stream_name": stream_name}, wrong),
        ("delete_stream", {"stream_name": stream_name}, None),
        ("create_stream", {"stream_name": stream_name}, DEFAULT_AUTH),
        ("process_events", {"stream_name": stream_name, "lease_seconds": 0}, DEFAULT_AUTH),
        ("process_events", {"stream_name": stream_name, "lease_seconds": 30}, wrong),
    ]
    for operation, body, auth in rejected:
        response = ask(client, operation, body, auth=auth)
        assert response["status"] is False, (operation, body, response)
    for raw in [b'{"operation": "write_event", "body": ', b"\xff", b'{"operation": "write_eventz"}']:
        assert exchange(client, raw + b"\n")["status"] is False
    assert client.call("get_stream_events", {"stream_name": stream_name}) == before
    assert client.call("get_stream_info", {"stream_name": stream_name}) == info_before


def test_invalid_names_create_no_stream(client: LineClient) -> None:
    for name in _BAD_STREAM_NAMES:
        assert ask(client, "create_stream", {"stream_name": name})["status"] is False
    names = {s["name"] for s in client.call("list_streams")["streams"]}
    assert not names & {n for n in _BAD_STREAM_NAMES if isinstance(n, str)}


def test_many_errors_in_a_row_keep_the_connection(client: LineClient, stream_name: str) -> None:
    """Errors pipelined back to back are each answered, in order, and the
    connection then works normally."""
    requests = [
        b"garbage",
        b"[]",
        line({"operation": "nope"}),
        line({"operation": "create_stream"}),
        line({"operation": "create_stream", "auth": DEFAULT_AUTH}),
        line({"operation": "create_stream", "auth": DEFAULT_AUTH, "body": {"stream_name": ""}}),
        line({"operation": "mark_event", "auth": DEFAULT_AUTH, "body": {"event_id": "e", "status": 7}}),
        line({"operation": "get_stream_info", "auth": DEFAULT_AUTH, "body": {"stream_name": stream_name}}),
    ]
    client.send_raw(b"".join(r.rstrip(b"\n") + b"\n" for r in requests))
    codes = [client.read()["code"] for _ in requests]
    assert codes == [
        "invalid_json",
        "invalid_json",
        "unknown_operation",
        "unauthorized",
        "missing_fields",
        "invalid_field",
        "invalid_status",
        "stream_not_found",
    ]
    assert client.call("create_stream", {"stream_name": stream_name})["stream"]["name"] == stream_name


# -- line_too_long ----------------------------------------------------------------------------------


def test_line_too_long_answers_then_closes(client: LineClient) -> None:
    limit = 1024 * 1024
    # One byte over, and no more: bytes the server never reads would make
    # its close a reset, which may race the answer.
    head = b'{"operation": "health", "pad": "'
    client.send_raw(head + b"x" * (limit + 1 - len(head)))
    response = client.read()
    assert response["operation"] == "decode_request"
    assert response["status"] is False
    assert response["code"] == "line_too_long"
    assert str(limit) in response["reason"]
    assert client.is_closed()


def test_line_just_under_the_limit_is_served(client: LineClient, stream_name: str) -> None:
    client.call("create_stream", {"stream_name": stream_name})
    head = json.dumps(
        {"operation": "write_event", "auth": DEFAULT_AUTH, "body": {"stream_name": stream_name, "event": ""}}
    )
    pad = 1024 * 1024 - len(head) - 10
    request = {
        "operation": "write_event",
        "auth": DEFAULT_AUTH,
        "body": {"stream_name": stream_name, "event": "y" * pad},
    }
    data = line(request)
    assert len(data) <= 1024 * 1024
    client.send_raw(data)
    event = client.read()["body"]["event"]
    assert event["body"] == "y" * pad
