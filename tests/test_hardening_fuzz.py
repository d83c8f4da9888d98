"""Fuzzing the protocol: thousands of generated lines, valid and hostile.

Every non-blank line gets exactly one well-formed response, in order; no
exception escapes and nothing is logged as an internal error; the healthy
database is never reported ``unavailable``.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventbus.operations import OPERATIONS
from tests.busclient import DEFAULT_AUTH, LineClient
from tests.hardening_support import AUTH, Harness, check_response, logged_failures
from tests.servers import ServerProcess

MAX_LINE = 4096
OPS = [op.name for op in OPERATIONS]
OPS_NO_EXIT = [op for op in OPS if op != "exit"]  # exit is rare below: it ends the connection
FIELDS = sorted({f.name for op in OPERATIONS for f in op.fields} | {"junk"})
STREAMS = ["s", "t", "u"]
WRONG = {"client_id": AUTH["client_id"], "client_secret": "nope"}

# -- strategies ------------------------------------------------------------------

leaves = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
    st.sampled_from(STREAMS),
)
json_values = st.recursive(
    leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=10,
)
field_values = st.one_of(
    json_values,
    st.sampled_from(STREAMS),
    st.integers(min_value=-2, max_value=40),
    st.floats(min_value=0, max_value=2),
    st.lists(st.sampled_from([1, "a", {"b": 2}]), min_size=1, max_size=3),
)
bodies = st.one_of(st.dictionaries(st.sampled_from(FIELDS), field_values, max_size=6), json_values)
requests = st.fixed_dictionaries(
    {"operation": st.one_of(st.sampled_from(OPS_NO_EXIT), st.sampled_from(OPS_NO_EXIT), json_values)},
    optional={"auth": st.one_of(st.just(AUTH), st.just(AUTH), st.just(WRONG), json_values), "body": bodies},
)


stream_names = st.sampled_from(STREAMS)
event_values = json_values.map(lambda v: 0 if v is None else v)
valid_requests = st.one_of(
    st.builds(lambda n: {"operation": "create_stream", "body": {"stream_name": n}}, stream_names),
    st.builds(
        lambda n, e: {"operation": "write_event", "body": {"stream_name": n, "event": e}},
        stream_names,
        event_values,
    ),
    st.builds(
        lambda n, es: {"operation": "write_events", "body": {"stream_name": n, "events": es}},
        stream_names,
        st.lists(event_values, min_size=1, max_size=5),
    ),
    st.builds(
        lambda op, n, limit, lease, wait: {
            "operation": op,
            "body": {"stream_name": n, "limit": limit, "lease_seconds": lease, "wait_seconds": wait},
        },
        st.sampled_from(["get_stream_events", "process_events", "retry_events"]),
        stream_names,
        st.one_of(st.none(), st.integers(min_value=1, max_value=10)),
        st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
        st.one_of(st.none(), st.just(0), st.floats(min_value=0, max_value=3)),
    ),
    st.builds(lambda n: {"operation": "get_stream_info", "body": {"stream_name": n}}, stream_names),
    st.builds(
        lambda i, status: {"operation": "mark_event", "body": {"event_id": i, "status": status}},
        st.uuids().map(str),
        st.integers(min_value=0, max_value=3),
    ),
    st.just({"operation": "list_streams", "body": {}}),
    st.just({"operation": "health"}),
).map(lambda r: {**r, "auth": AUTH})


def _dumps(value: Any) -> bytes:
    # The stdlib writes integers of any size (orjson refuses past 64 bits).
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


hostile_fixed = st.sampled_from(
    [
        b"",
        b"   ",
        b"\r",
        b"NaN",
        b'{"operation":"write_event","auth":{},"body":{"stream_name":"s","event":NaN}}',
        b'{"operation":"health","x":Infinity}',
        b'{"operation":"health","x":"\\ud800"}',
        b'{"operation":"health","x":"\xff\xfe"}',
        b"\xef\xbb\xbf{}",
        b'{"operation":"health"}{}',
        b"[]",
        b"null",
        b'"health"',
        b'{"operation":"health","n":' + b"9" * 400 + b"}",
        b'{"operation":"health","n":1e999}',
        b'{"operation":"health"}\x00',
        b"{" * 2000,
    ]
)
mutated = st.tuples(requests.map(_dumps), st.integers(min_value=0, max_value=200), st.binary(max_size=4)).map(
    lambda t: t[0][: t[1]] + t[2] + t[0][t[1] :]
)
lines = st.one_of(
    valid_requests.map(_dumps),
    valid_requests.map(_dumps),
    requests.map(_dumps),
    requests.map(_dumps),
    requests.map(_dumps).map(lambda b: b + b"\r"),
    hostile_fixed,
    st.binary(max_size=120),
    mutated,
    st.integers(min_value=1, max_value=3000).map(_nested),
    st.integers(min_value=200, max_value=1100).map(
        lambda n: _dumps(
            {"operation": "write_event", "auth": AUTH, "body": {"stream_name": "s", "event": 0}}
        ).replace(b'"event": 0', b'"event": ' + _nested(n))
    ),
    st.integers(min_value=MAX_LINE - 2, max_value=MAX_LINE + 50).map(lambda n: b"x" * n),
    st.integers(min_value=0, max_value=30).map(lambda i: b'{"operation":"exit"}' if i == 0 else b"{}"),
).map(lambda b: b.replace(b"\n", b" "))


# -- the protocol, in process ------------------------------------------------------


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    h = Harness(tmp_path_factory.mktemp("fuzz"), max_line_bytes=MAX_LINE, max_pending_requests=50)
    yield h
    h.close()


@pytest.fixture(scope="module")
def failures() -> Iterator[list[dict[str, Any]]]:
    with logged_failures() as seen:
        yield seen


def expected_answers(harness: Harness, sent: list[bytes]) -> list[str]:
    """The operation each response must name, until the connection closes."""
    out = []
    for line in sent:
        if len(line) > MAX_LINE:
            out.append("decode_request")  # line_too_long, then closed
            break
        if line.endswith(b"\r"):
            line = line[:-1]
        if not line.strip():
            continue
        request = harness.dispatcher.prepare(line)
        out.append(request.operation)
        if request.closes:
            break
    return out


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sent=st.lists(lines, min_size=10, max_size=50), chunk=st.sampled_from([1, 5, 64, 4096, 1 << 20]))
def test_every_line_gets_one_well_formed_response(
    harness: Harness, failures: list[dict[str, Any]], sent: list[bytes], chunk: int
) -> None:
    proto, transport = harness.connect()
    data = b"".join(line + b"\n" for line in sent)
    for i in range(0, len(data), chunk):
        proto.dataReceived(data[i : i + chunk])  # any exception fails the test
    # Long polls end; delayed answers to auth failures go out, one per step
    # (a connection reads nothing more while one is held).
    for _ in range(len(sent) + 3):
        harness.clock.advance(31)
    out = transport.value()
    assert out == b"" or out.endswith(b"\n")
    responses = [orjson.loads(line) for line in out.splitlines()]
    for response in responses:
        check_response(response)
        assert response.get("code") != "unavailable", response
    assert [r["operation"] for r in responses] == expected_answers(harness, sent)
    proto.connectionLost(None)
    assert not failures, failures[0]["log_failure"].getTraceback()
    assert harness.factory.inflight == 0


# -- a real server ------------------------------------------------------------------


def generated_lines(rng: random.Random, count: int) -> list[bytes]:
    """Valid and hostile request lines (no exit, none too long)."""
    ops = [o for o in OPS if o != "exit"]

    def value() -> Any:
        return rng.choice(
            [
                None,
                True,
                0,
                -1,
                7,
                2**63,
                1.5,
                "",
                "s",
                "t",
                [1],
                {"a": 1},
                [[[]]],
                "x" * 300,
                {"k": [None, 1.0]},
            ]
        )

    out = []
    for _ in range(count):
        kind = rng.random()
        request: dict[str, Any] = {"operation": rng.choice(ops)}
        if rng.random() < 0.9:
            request["auth"] = rng.choice([DEFAULT_AUTH, DEFAULT_AUTH, DEFAULT_AUTH, WRONG, {}, []])
        body = {rng.choice(FIELDS): value() for _ in range(rng.randint(0, 5))}
        if rng.random() < 0.6:
            body["stream_name"] = rng.choice(STREAMS)
        if "wait_seconds" in body:
            body["wait_seconds"] = 0
        request["body"] = body if rng.random() < 0.95 else value()
        line = _dumps(request)
        if kind < 0.15:
            cut = rng.randrange(len(line))
            line = line[:cut] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 3))) + line[cut:]
        elif kind < 0.2:
            line = rng.choice([b"[" * 5000, b"\xff\xfe\xfd", b'{"operation":"health","x":NaN}', b"{}", b"  "])
        out.append(line.replace(b"\n", b" ").replace(b"\r", b" "))
    return out


def test_generated_lines_against_a_real_server(tmp_path: Path) -> None:
    # Auth failures are many here: answer them without the usual slow-down.
    server = ServerProcess(tmp_path / "srv", server={"auth_failure_max_delay_seconds": 0.001}).start()
    rng = random.Random(20261129)
    try:
        with LineClient(server.port, timeout=60) as c:
            for name in STREAMS:
                c.call("create_stream", {"stream_name": name})
            total = 0
            for _ in range(5):
                batch = generated_lines(rng, 600)
                c.send_raw(b"".join(line + b"\n" for line in batch))
                for line in batch:
                    if not line.strip():
                        continue
                    response = c.read()
                    check_response(response)
                    assert response.get("code") != "unavailable", (line[:200], response)
                    total += 1
            assert total > 2500
            assert c.request("health", auth=None) == {"operation": "health", "status": True}
    finally:
        server.stop()
    assert "Traceback" not in server.log_text()
