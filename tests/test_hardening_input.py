"""Hostile input over real TCP: each bad line gets one clear error response
and the connection stays usable."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from eventbus.operations import OPERATIONS
from tests.busclient import DEFAULT_AUTH, LineClient
from tests.hardening_support import check_response
from tests.servers import ServerProcess

A = json.dumps(DEFAULT_AUTH)


@pytest.fixture(scope="module")
def hostile_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("hostile")).start()
    with LineClient(proc.port) as c:
        c.call("create_stream", {"stream_name": "h"})
    yield proc
    proc.stop()
    # Nothing hostile reached the log as an internal error.
    assert "Traceback" not in proc.log_text()


@pytest.fixture(scope="module")
def conn(hostile_server: ServerProcess) -> Iterator[LineClient]:
    """One connection for every case: it must survive them all."""
    with LineClient(hostile_server.port) as c:
        yield c


def req(operation: str, body: str | None = None, auth: str = A) -> bytes:
    """A request line from JSON texts, so the texts may be anything."""
    text = '{"operation":"' + operation + '","auth":' + auth
    if body is not None:
        text += ',"body":' + body
    return text.encode("utf-8", "surrogatepass") + b"}"


def write(event: str) -> bytes:
    return req("write_event", '{"stream_name":"h","event":' + event + "}")


def auth(client_id: str, secret: str) -> str:
    return '{"client_id":' + client_id + ',"client_secret":' + secret + "}"


DEEP = 100_000  # far past any parser's nesting limit, well under 1 MiB
HEALTH = b'{"operation":"health"'

HOSTILE: list[tuple[str, bytes, str]] = [
    # (case, line, expected code)
    ("deep array", b"[" * DEEP + b"]" * DEEP, "invalid_json"),
    ("deep object", b'{"a":' * DEEP + b"1" + b"}" * DEEP, "invalid_json"),
    ("deep event, past the decoder", write("[" * 2000 + "]" * 2000), "invalid_json"),
    ("deep event, past the encoder", write("[" * 300 + "]" * 300), "invalid_field"),
    ("deep body", req("create_stream", "[" * 5000 + "]" * 5000), "invalid_json"),
    ("huge integer", write("1" * 5000), "invalid_json"),
    ("integer past 64 bits", write("18446744073709551616"), "invalid_json"),
    ("huge exponent", write("1e999999"), "invalid_json"),
    ("negative huge", write("-1e400"), "invalid_json"),
    ("huge status", req("mark_event", '{"event_id":"x","status":1e300}'), "invalid_field"),
    ("NaN", write("NaN"), "invalid_json"),
    ("Infinity", write("Infinity"), "invalid_json"),
    ("-Infinity", write("-Infinity"), "invalid_json"),
    ("lone high surrogate", write('"\\ud800"'), "invalid_json"),
    ("lone low surrogate", write('"\\udc00x"'), "invalid_json"),
    ("surrogate in a name", req("create_stream", '{"stream_name":"\\ud83d"}'), "invalid_json"),
    (
        "surrogate in a secret",
        req("list_streams", auth='{"client_id":"a","client_secret":"\\udfff"}'),
        "invalid_json",
    ),
    ("byte 0xff", HEALTH + b"}\xff", "invalid_json"),
    ("invalid utf-8 in a string", write('"?"').replace(b'"?"', b'"\xc3\x28"'), "invalid_json"),
    ("overlong encoding", b'{"operation":"he\xc0\xafalth"}', "invalid_json"),
    ("truncated sequence", HEALTH + b',"x":"\xe2\x82"}', "invalid_json"),
    (
        "latin-1 text",
        req("create_stream", '{"stream_name":"caf\xe9"}').replace(b"\xc3\xa9", b"\xe9"),
        "invalid_json",
    ),
    ("byte order mark", b"\xef\xbb\xbf" + HEALTH + b"}", "invalid_json"),
    ("NUL byte", HEALTH + b"}\x00", "invalid_json"),
    ("raw control in a string", HEALTH + b',"x":"a\x01b"}', "invalid_json"),
    ("array", b"[]", "invalid_json"),
    ("string", b'"health"', "invalid_json"),
    ("number", b"42", "invalid_json"),
    ("null", b"null", "invalid_json"),
    ("true", b"true", "invalid_json"),
    ("two objects", HEALTH + b"}" + HEALTH + b"}", "invalid_json"),
    ("trailing comma", HEALTH + b",}", "invalid_json"),
    ("single quotes", b"{'operation':'health'}", "invalid_json"),
    ("comment", HEALTH + b"} // hi", "invalid_json"),
    ("operation list", b'{"operation":[]}', "unknown_operation"),
    ("operation object", b'{"operation":{"a":1}}', "unknown_operation"),
    ("operation number", b'{"operation":1}', "unknown_operation"),
    ("operation null", b'{"operation":null}', "unknown_operation"),
    ("operation with NUL", b'{"operation":"health\\u0000"}', "unknown_operation"),
    ("auth list", req("list_streams", auth="[]"), "unauthorized"),
    ("auth string", req("list_streams", auth='"dope_go_client_id"'), "unauthorized"),
    ("client_id number", req("list_streams", auth=auth("1", '"x"')), "unauthorized"),
    ("client_secret object", req("list_streams", auth=auth('"dope_go_client_id"', "{}")), "unauthorized"),
    ("client_secret null", req("list_streams", auth=auth('"dope_go_client_id"', "null")), "unauthorized"),
    ("body list", req("get_stream_info", "[]"), "missing_fields"),
    ("body string", req("get_stream_info", '"h"'), "missing_fields"),
]


@pytest.mark.parametrize(("case", "raw", "code"), HOSTILE, ids=[c[0] for c in HOSTILE])
def test_hostile_line_gets_one_clear_error(conn: LineClient, case: str, raw: bytes, code: str) -> None:
    conn.send_raw(raw + b"\n" + b'{"operation":"health"}\n')
    response = json.loads(conn.read_line())
    check_response(response)
    assert response["status"] is False and response["code"] == code, (case, response)
    # Exactly one response, then the connection goes on.
    assert conn.read() == {"operation": "health", "status": True}


# Wrong types in every field of every operation.
WRONG_VALUES: list[Any] = [[], {}, "x", "", 1.5, True, -1, 2**63, 0]


def field_cases() -> list[tuple[str, str, Any]]:
    cases = []
    for op in OPERATIONS:
        for field in op.fields:
            for value in WRONG_VALUES:
                cases.append((op.name, field.name, value))
    return cases


def valid_body(operation: str) -> dict[str, Any]:
    return {
        "stream_name": "h",
        "event": {"ok": 1},
        "events": [1],
        "event_id": "00000000-0000-0000-0000-000000000000",
        "event_ids": ["00000000-0000-0000-0000-000000000000"],
        "status": 1,
    }


ALLOWED = {"invalid_field", "invalid_status", "missing_fields", "stream_not_found", "event_not_found"}


def test_wrong_types_in_every_field(conn: LineClient) -> None:
    cases = field_cases()
    assert len(cases) > 100
    lines = []
    for operation, field, value in cases:
        body = {
            k: v
            for k, v in valid_body(operation).items()
            if k in {f.name for f in next(o for o in OPERATIONS if o.name == operation).fields}
        }
        body[field] = value
        lines.append(json.dumps({"operation": operation, "auth": DEFAULT_AUTH, "body": body}).encode())
    # Pipelined, all at once: one response per line, in order.
    conn.send_raw(b"\n".join(lines) + b"\n")
    for (operation, field, value), _ in zip(cases, lines):
        response = conn.read()
        check_response(response)
        assert response["operation"] == operation, (operation, field, value, response)
        if not response["status"]:
            assert response["code"] in ALLOWED, (operation, field, value, response)
    assert conn.request("health", auth=None) == {"operation": "health", "status": True}
