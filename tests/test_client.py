"""The Python clients against a real server: results, errors, reconnects,
pipelining, TLS, the consumer loop, threads, and the Twisted client."""

from __future__ import annotations

import select
import socket
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from eventbus.client import (
    Client,
    ConnectionFailed,
    Consumer,
    Event,
    EventNotFound,
    InvalidRequest,
    LeaseLost,
    Status,
    Stream,
    StreamExists,
    StreamNotFound,
    TLSFailed,
    Unauthorized,
    parse_address,
)
from eventbus.client.calls import Call
from tests.servers import ROOT, TEST_CLIENTS, ServerProcess
from tests.tls import self_signed

CREDS = TEST_CLIENTS["go-client"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The client does not care which database the server uses: SQLite only."""
    proc = ServerProcess(tmp_path_factory.mktemp("client-server")).start()
    yield proc
    proc.stop()


@pytest.fixture
def bus(server: ServerProcess) -> Iterator[Client]:
    with Client(f"127.0.0.1:{server.port}", CREDS["client_id"], CREDS["client_secret"]) as c:
        yield c


def _closed_by_server(client: Client) -> None:
    """Have the server close this client's connection while the client keeps
    it (``exit`` sent as a raw call), and wait until the close has arrived."""
    client.run(Call("exit", None, lambda _: None, safe=False, auth=False))
    readable, _, _ = select.select([client._conn.sock], [], [], 10)
    assert readable


def test_parse_address() -> None:
    assert parse_address("example.org:9000") == parse_address("tcp://example.org:9000")
    assert parse_address("tls://h:1").tls is True
    assert parse_address("[::1]:7").host == "::1"
    assert parse_address("h").port == 8080
    with pytest.raises(ValueError):
        parse_address("h:notaport")


def test_operations_return_plain_objects(bus: Client, stream_name: str) -> None:
    bus.health()
    stream = bus.create_stream(stream_name, max_deliveries=5, retention_seconds=3600)
    assert isinstance(stream, Stream)
    assert (stream.name, stream.max_deliveries, stream.retention_seconds) == (stream_name, 5, 3600)
    assert stream.created_at.tzinfo is not None
    assert stream_name in [s.name for s in bus.list_streams()]

    written = bus.write_event(stream_name, {"id": 1}, key="order-1")
    assert isinstance(written.event, Event) and written.event.body == {"id": 1} and not written.duplicate
    again = bus.write_event(stream_name, {"id": 1}, key="order-1")
    assert again.duplicate and again.event.id == written.event.id
    batch = bus.write_events(stream_name, [{"n": n} for n in range(3)])
    assert [e.body for e in batch] == [{"n": 0}, {"n": 1}, {"n": 2}]

    page = bus.get_stream_events(stream_name, limit=2)
    assert [e.id for e in page] == [written.event.id, batch[0].id] and page.next_after_seq is not None
    rest = bus.get_stream_events(stream_name, after_seq=page.next_after_seq)
    assert [e.id for e in rest] == [batch[1].id, batch[2].id] and rest.next_after_seq is None
    everything = [e.id for e in bus.iter_events(stream_name, page_size=1)]
    assert everything == [written.event.id] + [e.id for e in batch]

    bus.mark_event(written.event.id, Status.PROCESSED)
    marked = bus.mark_events([batch[0].id, "no-such-id"], "retry")
    assert (marked.marked, marked.not_found) == (1, ["no-such-id"])
    assert [e.id for e in bus.retry_events(stream_name)] == [batch[0].id]
    assert [e.id for e in bus.process_events(stream_name)] == [batch[1].id, batch[2].id]

    leased = bus.process_events(stream_name, limit=1, lease_seconds=60)
    assert leased.events[0].lease_id and leased.events[0].deliveries == 1
    info = bus.get_stream_info(stream_name)
    assert info.stream.id == stream.id
    assert (info.stats.unprocessed, info.stats.processed, info.stats.retry, info.stats.leased) == (2, 1, 1, 1)
    assert info.stats.total == 4

    bus.delete_stream(stream_name)
    with pytest.raises(StreamNotFound):
        bus.get_stream_info(stream_name)


def test_errors_carry_code_and_reason(bus: Client, stream_name: str) -> None:
    bus.create_stream(stream_name)
    with pytest.raises(StreamExists) as info:
        bus.create_stream(stream_name)
    assert info.value.code == "stream_exists"
    assert info.value.reason == f"stream: '{stream_name}' already exists"
    with pytest.raises(EventNotFound) as missing:
        bus.mark_event("nope", 1)
    assert missing.value.code == "event_not_found"
    with pytest.raises(InvalidRequest) as bad:
        bus.get_stream_events(stream_name, limit=0)
    assert bad.value.code == "invalid_field"
    event = bus.write_event(stream_name, 1).event
    leased = bus.process_events(stream_name, lease_seconds=60).events[0]
    bus.mark_event(event.id, 1)  # without the lease: applies, ends the lease
    with pytest.raises(LeaseLost) as lost:
        bus.mark_event(event.id, 2, lease_id=leased.lease_id)
    assert lost.value.code == "lease_lost"
    with pytest.raises(ValueError):
        bus.mark_event(event.id, "finished")


def test_wrong_secret_is_unauthorized(server: ServerProcess) -> None:
    with Client(f"127.0.0.1:{server.port}", CREDS["client_id"], "wrong") as c:
        c.health()  # no auth needed
        with pytest.raises(Unauthorized) as info:
            c.list_streams()
    assert info.value.reason == "unauthorized to make request"


def test_reconnects_after_the_server_closed_the_connection(bus: Client, stream_name: str) -> None:
    bus.create_stream(stream_name)
    _closed_by_server(bus)
    # Not a safe request, but the closed connection is noticed before sending.
    bus.write_event(stream_name, {"after": "exit"})
    assert bus.connects == 2
    assert [e.body for e in bus.get_stream_events(stream_name)] == [{"after": "exit"}]


def test_connection_refused_is_connection_failed() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # bound, not listening: refused
        with Client(f"127.0.0.1:{port}", retries=1, retry_delay=0.01) as c:
            with pytest.raises(ConnectionFailed) as info:
                c.health()
    assert info.value.maybe_applied is False


class _DroppingServer:
    """Closes the first ``drops`` connections after reading one request,
    then answers every request ``{"status": true}``: a connection lost with
    the request sent and its answer never coming."""

    def __init__(self, drops: int) -> None:
        self.drops = drops
        self.requests: list[bytes] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn, conn.makefile("rb") as lines:
                for line in lines:
                    self.requests.append(line)
                    if self.drops > 0:
                        self.drops -= 1
                        break
                    conn.sendall(b'{"operation":"x","status":true}\n')

    def close(self) -> None:
        self.sock.close()


def test_lost_answer_resends_only_safe_requests() -> None:
    server = _DroppingServer(drops=1)
    try:
        with Client(f"127.0.0.1:{server.port}", "id", "secret", retry_delay=0.01) as c:
            c.health()  # safe: sent again on a new connection
            assert c.connects == 2 and len(server.requests) == 2
            server.drops = 1
            with pytest.raises(ConnectionFailed) as info:
                c.create_stream("x")  # not safe: the server may have created it
            assert info.value.maybe_applied is True
            assert len(server.requests) == 3
            server.drops = 1
            c.mark_event("some-id", 1)  # a mark without a lease is safe
            assert len(server.requests) == 5
    finally:
        server.close()


def test_pipeline_many_requests_in_order(bus: Client, stream_name: str) -> None:
    bus.create_stream(stream_name)
    seen: list[int] = []
    with bus.pipeline() as p:
        for n in range(600):  # more than the in-flight window
            p.write_event(stream_name, {"n": n})
        p.get_stream_info("no-such-stream-" + stream_name)
        p.get_stream_info(stream_name)
    assert len(p.results) == 602
    assert [r.event.body["n"] for r in p.results[:600]] == list(range(600))
    assert isinstance(p.results[600], StreamNotFound)
    assert p.results[601].stats.total == 600
    with pytest.raises(StreamNotFound):
        p.raise_first_error()

    pipe = bus.pipeline()
    for n in range(5):
        pipe.write_events(stream_name, [n] * 1000)
    results = pipe.execute(on_result=lambda i, _r: seen.append(i))
    assert seen == [0, 1, 2, 3, 4] and all(len(r) == 1000 for r in results)
    assert bus.get_stream_info(stream_name).stats.total == 5600


def test_one_client_shared_by_threads_and_one_per_thread(server: ServerProcess, stream_name: str) -> None:
    address = f"127.0.0.1:{server.port}"
    shared = Client(address, CREDS["client_id"], CREDS["client_secret"])
    shared.create_stream(stream_name)
    errors: list[BaseException] = []

    def write(client: Client, tag: str) -> None:
        try:
            for n in range(50):
                client.write_event(stream_name, {"t": tag, "n": n})
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    own = [Client(address, CREDS["client_id"], CREDS["client_secret"]) for _ in range(3)]
    threads = [threading.Thread(target=write, args=(shared, f"shared{i}")) for i in range(3)]
    threads += [threading.Thread(target=write, args=(c, f"own{i}")) for i, c in enumerate(own)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    bodies = [e.body for e in shared.iter_events(stream_name)]
    assert len(bodies) == 300
    for tag in ("shared0", "shared1", "shared2", "own0", "own1", "own2"):
        assert [b["n"] for b in bodies if b["t"] == tag] == list(range(50))
    for c in [shared, *own]:
        c.close()


def test_consume_marks_processed_and_retry(bus: Client, stream_name: str) -> None:
    bus.create_stream(stream_name)
    ids = [e.id for e in bus.write_events(stream_name, [{"n": n} for n in range(5)])]
    handled = []
    consumer = bus.consume(stream_name, lease_seconds=30, wait_seconds=0, batch=3)
    with pytest.raises(RuntimeError, match="bad event"):
        for event in consumer:
            if event.body["n"] == 3:
                raise RuntimeError("bad event")
            handled.append(event.body["n"])
    assert handled == [0, 1, 2]
    statuses = {e.id: e.status for e in bus.iter_events(stream_name)}
    # 0-2 processed, 3 retry (it raised), 4 fetched in 3's batch but never
    # handed out: released at once, unprocessed and unleased.
    assert [statuses[i] for i in ids] == [1, 1, 1, 2, 0]
    assert bus.get_stream_info(stream_name).stats.leased == 0

    # run(): failures are marked retry and the loop goes on; retries come round.
    attempts: dict[int, int] = {}

    def handler(event: Event) -> None:
        n = event.body["n"]
        attempts[n] = attempts.get(n, 0) + 1
        if n == 4 and attempts[n] == 1:
            raise ValueError("first try fails")

    worker = bus.consume(stream_name, lease_seconds=30, wait_seconds=0, max_events=3)
    worker.run(handler)
    assert attempts == {3: 1, 4: 2}
    assert (worker.processed, worker.failed) == (2, 1)
    stats = bus.get_stream_info(stream_name).stats
    assert (stats.processed, stats.retry, stats.unprocessed) == (5, 0, 0)


def test_consume_stop_settle_and_break(bus: Client, stream_name: str) -> None:
    bus.create_stream(stream_name)
    ids = [e.id for e in bus.write_events(stream_name, ["a", "b", "c", "d"])]
    consumer = bus.consume(stream_name, lease_seconds=30, wait_seconds=0, retries=False)
    for event in consumer:
        if event.body == "a":
            consumer.settle(Status.DEAD)
        if event.body == "b":
            consumer.stop()  # b is still marked processed
    for _event in bus.consume(stream_name, lease_seconds=30, wait_seconds=0, retries=False):
        break  # c is abandoned: marked retry, like an exception
    statuses = [e.status for e in bus.iter_events(stream_name)]
    assert statuses == [Status.DEAD, Status.PROCESSED, Status.RETRY, Status.UNPROCESSED]
    assert [e.id for e in bus.retry_events(stream_name)] == [ids[2]]


def test_competing_consumers_one_client_per_thread(server: ServerProcess, stream_name: str) -> None:
    address = f"127.0.0.1:{server.port}"
    with Client(address, CREDS["client_id"], CREDS["client_secret"]) as admin:
        admin.create_stream(stream_name)
        admin.write_events(stream_name, list(range(200)))
    seen: list[int] = []
    lock = threading.Lock()
    all_seen = threading.Event()
    clients = [Client(address, CREDS["client_id"], CREDS["client_secret"]) for _ in range(3)]
    consumers = [c.consume(stream_name, lease_seconds=60, wait_seconds=0.5, batch=7) for c in clients]

    def work(consumer: Consumer) -> None:
        for event in consumer:
            with lock:
                seen.append(event.body)
                if len(seen) == 200:
                    all_seen.set()

    threads = [threading.Thread(target=work, args=(c,)) for c in consumers]
    for t in threads:
        t.start()
    assert all_seen.wait(60)
    for consumer in consumers:
        consumer.stop()  # from another thread: ends after the current long poll
    for t in threads:
        t.join(30)
    assert sorted(seen) == list(range(200))  # each event handed to exactly one consumer
    assert sum(c.processed for c in consumers) == 200
    assert clients[0].get_stream_info(stream_name).stats.processed == 200
    for c in clients:
        c.close()


def test_tls(tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    listen = f"ssl:0:privateKey={key}:certKey={cert}:interface=127.0.0.1"
    proc = ServerProcess(tmp_path / "tls", listen=listen).start()
    try:
        address = f"tls://127.0.0.1:{proc.port}"
        with Client(address, CREDS["client_id"], CREDS["client_secret"], ca_file=str(cert)) as c:
            c.create_stream("secure")
            with c.pipeline() as p:
                for n in range(300):
                    p.write_event("secure", n)
            assert c.get_stream_info("secure").stats.total == 300
            c.exit()
            assert len(c.get_stream_events("secure").events) == 300  # reconnected over TLS
            assert c.connects == 2
        with Client(address, CREDS["client_id"], CREDS["client_secret"]) as untrusting:
            with pytest.raises(TLSFailed):
                untrusting.health()
    finally:
        proc.stop()


def test_from_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EVENTBUS_ADDRESS", f"127.0.0.1:{server.port}")
    monkeypatch.setenv("EVENTBUS_CLIENT_ID", CREDS["client_id"])
    monkeypatch.setenv("EVENTBUS_CLIENT_SECRET", CREDS["client_secret"])
    with Client.from_env() as c:
        assert isinstance(c.list_streams(), list)


TWISTED_SCRIPT = textwrap.dedent(
    """
    import sys
    from twisted.internet import defer, task
    from eventbus.client import StreamNotFound
    from eventbus.client.deferred import TwistedClient

    @defer.inlineCallbacks
    def main(reactor, port, stream):
        bus = TwistedClient(reactor, f"127.0.0.1:{port}", "dope_go_client_id", "dope_go_client_secret")
        yield bus.health()
        yield bus.create_stream(stream)
        # Pipelined: all sent before any answer is read.
        written = yield defer.gatherResults([bus.write_event(stream, {"n": n}) for n in range(50)])
        assert [w.event.body["n"] for w in written] == list(range(50)), written
        page = yield bus.process_events(stream, limit=10, lease_seconds=30, wait_seconds=1)
        yield defer.gatherResults([bus.mark_event(e.id, 1, lease_id=e.lease_id) for e in page])
        info = yield bus.get_stream_info(stream)
        assert (info.stats.processed, info.stats.unprocessed) == (10, 40), info
        try:
            yield bus.get_stream_info(stream + "-missing")
        except StreamNotFound as e:
            print("refused", e.code)
        # The server closes the connection; the next request reconnects.
        yield bus.exit()
        streams = yield bus.list_streams()
        assert stream in [s.name for s in streams]
        print("connects", bus.connects)
        yield bus.close()

    task.react(main, [int(sys.argv[1]), sys.argv[2]])
    """
)


def test_twisted_client(server: ServerProcess, stream_name: str) -> None:
    result = subprocess.run(
        [sys.executable, "-c", TWISTED_SCRIPT, str(server.port), stream_name],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:2] == ["refused stream_not_found", "connects 2"]
