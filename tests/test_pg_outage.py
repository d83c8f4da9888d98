"""A PostgreSQL outage: ``unavailable`` while it lasts, then the node recovers.

The node reaches PostgreSQL through a TCP proxy the test cuts (every open
connection reset, new ones refused: what a database restart looks like from
the node) and restores. A second node, connected directly, writes during and
after the outage.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import make_url

from tests.busclient import DEFAULT_AUTH, LineClient
from tests.pg import PgAdmin, TcpProxy
from tests.servers import ServerProcess

pytestmark = pytest.mark.postgresql

LISTENING = "listening for changes from other nodes"


@pytest.fixture
def setup(pg_admin: PgAdmin, tmp_path: Path) -> Iterator[tuple[TcpProxy, ServerProcess, ServerProcess]]:
    with pg_admin.database("eventbus_outage") as url:
        upstream = make_url(url)
        proxy = TcpProxy(upstream.host or "127.0.0.1", upstream.port or 5432)
        behind = ServerProcess(tmp_path / "behind", database=proxy.url_for(url))
        direct = ServerProcess(tmp_path / "direct", database=url)
        try:
            yield proxy, behind.start(), direct.start()
        finally:
            behind.stop()
            direct.stop()
            proxy.close()


def _eventually(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.2)
    raise AssertionError(f"not {what} after {timeout}s")


def test_outage_gives_unavailable_then_recovers_by_itself(
    setup: tuple[TcpProxy, ServerProcess, ServerProcess], stream_name: str
) -> None:
    proxy, behind, direct = setup
    with LineClient(behind.port, timeout=30) as c:
        c.call("create_stream", {"stream_name": stream_name})
        first = c.call("write_event", {"stream_name": stream_name, "event": "before"})["event"]

        proxy.down()
        requests: list[tuple[str, dict[str, Any]]] = [
            ("write_event", {"stream_name": stream_name, "event": "during"}),
            ("write_events", {"stream_name": stream_name, "events": ["during", "during"]}),
            ("get_stream_events", {"stream_name": stream_name}),
            ("process_events", {"stream_name": stream_name, "lease_seconds": 30}),
            ("mark_event", {"event_id": first["id"], "status": 1}),
            ("get_stream_info", {"stream_name": stream_name}),
            ("list_streams", {}),
            ("create_stream", {"stream_name": f"{stream_name}-new"}),
            ("write_event", {"stream_name": stream_name, "event": "during"}),
        ]
        for operation, body in requests:
            answer = c.request(operation, body)
            assert answer["status"] is False and answer["code"] == "unavailable", (operation, answer)
        assert c.request("health", auth=None)["status"] is True  # the node itself is fine
        # Meanwhile the database is fine for a node that can reach it.
        with LineClient(direct.port) as d:
            d.call("write_event", {"stream_name": stream_name, "event": "elsewhere"})

        proxy.up()
        after = {"stream_name": stream_name, "event": "after"}
        _eventually(lambda: c.request("write_event", after)["status"] is True, 30, "writing again")
        bodies = [e["body"] for e in c.call("get_stream_events", {"stream_name": stream_name})["events"]]
    # What was refused did not happen; what was acknowledged is there.
    assert bodies[:2] == ["before", "elsewhere"] and "during" not in bodies
    assert set(bodies[2:]) == {"after"}
    # The node listens again: a write on the other node wakes its long poll.
    _eventually(lambda: behind.log_text().count(LISTENING) >= 2, 30, "listening again")
    polled = f"{stream_name}-poll"
    with LineClient(behind.port, timeout=30) as waiter, LineClient(direct.port) as writer:
        writer.call("create_stream", {"stream_name": polled})
        waiter.send(
            {
                "operation": "process_events",
                "auth": DEFAULT_AUTH,
                "body": {"stream_name": polled, "wait_seconds": 20},
            }
        )
        time.sleep(0.5)
        started = time.monotonic()
        event = writer.call("write_event", {"stream_name": polled, "event": "wake"})["event"]
        answer = waiter.read()
    assert [e["id"] for e in answer["body"]["events"]] == [event["id"]]
    assert time.monotonic() - started < 10, "the poll ended by its timeout, not by the write"


def test_a_write_whose_commit_answer_is_lost_is_not_answered_unavailable(
    pg_admin: PgAdmin, tmp_path: Path, stream_name: str
) -> None:
    """The connection to PostgreSQL breaks after the COMMIT was sent: the
    event may be stored (here it is), so ``unavailable`` (nothing was
    changed) would be wrong. The client's connection is closed unanswered,
    as a crash would close it; the node then writes again."""
    with pg_admin.database("eventbus_commit_cut") as url:
        upstream = make_url(url)
        proxy = TcpProxy(upstream.host or "127.0.0.1", upstream.port or 5432)
        # No housekeeping meanwhile: its commits would be the next ones.
        node = ServerProcess(
            tmp_path / "node", database=proxy.url_for(url), server={"housekeeping_interval_seconds": 3600}
        ).start()
        try:
            with LineClient(node.port, timeout=30) as c:
                c.call("create_stream", {"stream_name": stream_name})
                c.call("write_event", {"stream_name": stream_name, "event": "before"})
                proxy.cut_after_next_commit()
                c.send(
                    {
                        "operation": "write_event",
                        "auth": DEFAULT_AUTH,
                        "body": {"stream_name": stream_name, "event": "cut"},
                    }
                )
                assert c.is_closed(20) and c.buffer == b""
            assert proxy.commits_cut == 1
            with LineClient(node.port, timeout=30) as c:
                after = {"stream_name": stream_name, "event": "after"}
                _eventually(lambda: c.request("write_event", after)["status"] is True, 30, "writing again")
                bodies = [
                    e["body"] for e in c.call("get_stream_events", {"stream_name": stream_name})["events"]
                ]
            assert bodies == ["before", "cut", "after"]
        finally:
            node.stop()
            proxy.close()
