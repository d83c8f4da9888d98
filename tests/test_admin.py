"""The admin listener: /metrics after known traffic, /health, the status page
in a real headless browser, and JSON logs."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import urllib.request
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from eventbus.admin import admin_endpoint
from eventbus.admin.resources import HealthResource
from eventbus.client import Client, StreamExists
from eventbus.errors import unavailable
from tests.servers import ROOT, TEST_CLIENTS, ServerProcess

CREDS = TEST_CLIENTS["go-client"]
ARTIFACTS = ROOT / "test-artifacts"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("admin-server"), admin="tcp:0").start()
    yield proc
    proc.stop()


@pytest.fixture
def bus(server: ServerProcess) -> Iterator[Client]:
    with Client(f"127.0.0.1:{server.port}", CREDS["client_id"], CREDS["client_secret"]) as c:
        yield c


def get(server: ServerProcess, path: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.admin_port}{path}", timeout=10) as r:
            return r.status, r.headers.get("content-type", ""), r.read().decode("utf-8")
    except urllib.error.HTTPError as e:
        return e.code, e.headers.get("content-type", ""), e.read().decode("utf-8")


def scrape(server: ServerProcess) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of /metrics, parsed by Prometheus's own parser."""
    status, content_type, text = get(server, "/metrics")
    assert status == 200 and content_type.startswith("text/plain")
    samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_admin_endpoint_binds_localhost_unless_told() -> None:
    assert admin_endpoint("9100") == "tcp:9100:interface=127.0.0.1"
    assert admin_endpoint("tcp:9100") == "tcp:9100:interface=127.0.0.1"
    assert admin_endpoint("tcp:9100:interface=0.0.0.0") == "tcp:9100:interface=0.0.0.0"
    assert admin_endpoint("unix:/run/eventbus-admin.sock") == "unix:/run/eventbus-admin.sock"


def test_metrics_count_known_traffic(server: ServerProcess, bus: Client, stream_name: str) -> None:
    before = scrape(server)
    bus.create_stream(stream_name)
    with pytest.raises(StreamExists):
        bus.create_stream(stream_name)
    for n in range(3):
        bus.write_event(stream_name, {"n": n})
    bus.write_event(stream_name, {"n": 0}, key="k")
    bus.write_event(stream_name, {"n": 0}, key="k")  # duplicate: not written again
    bus.write_events(stream_name, list(range(5)))
    leased = bus.process_events(stream_name, limit=2, lease_seconds=60)
    for event in leased:
        bus.mark_event(event.id, 1, lease_id=event.lease_id)
    retry_me = bus.process_events(stream_name).events[0]
    bus.mark_event(retry_me.id, "retry")
    after = scrape(server)

    def delta(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert delta("eventbus_requests_total", operation="create_stream", outcome="ok") == 1
    assert delta("eventbus_requests_total", operation="create_stream", outcome="stream_exists") == 1
    assert delta("eventbus_requests_total", operation="write_event", outcome="ok") == 5
    assert delta("eventbus_requests_total", operation="mark_event", outcome="ok") == 3
    assert delta("eventbus_request_duration_seconds_count", operation="write_event") == 5
    assert delta("eventbus_events_written_total") == 9
    assert delta("eventbus_events_duplicate_total") == 1
    assert delta("eventbus_events_leased_total") == 2
    assert delta("eventbus_events_marked_total", status="processed") == 2
    assert delta("eventbus_events_marked_total", status="retry") == 1
    assert delta("eventbus_group_commit_jobs_count") >= 1
    assert delta("eventbus_storage_transaction_seconds_count", kind="write_batch") >= 1
    assert delta("eventbus_storage_transaction_seconds_count", kind="read") >= 1
    # Per-stream figures (a snapshot at most a second old at scrape time).
    assert value(after, "eventbus_stream_backlog", stream=stream_name) == 6
    assert value(after, "eventbus_stream_events", stream=stream_name, status="processed") == 2
    assert value(after, "eventbus_stream_events", stream=stream_name, status="retry") == 1
    assert value(after, "eventbus_connections") >= 1

    bus.delete_stream(stream_name)
    gone = scrape(server)
    assert ("eventbus_stream_backlog", (("stream", stream_name),)) not in gone


def test_health(server: ServerProcess) -> None:
    status, content_type, body = get(server, "/health")
    assert status == 200 and content_type == "application/json"
    assert json.loads(body)["status"] == "ok"


class _Db:
    def __init__(self, result: Deferred) -> None:
        self.result = result

    def write(self, fn: Any, *args: Any) -> Deferred:
        return self.result


def _render(resource: HealthResource) -> DummyRequest:
    request = DummyRequest([b""])
    resource.render(request)
    return request


def test_health_is_503_when_the_database_fails_or_hangs() -> None:
    clock = Clock()
    ok = _render(HealthResource(_Db(succeed(True)), clock))
    assert ok.finished and ok.responseCode in (None, 200)
    failing = _render(HealthResource(_Db(fail(unavailable("storage is failing; retry"))), clock))
    assert failing.responseCode == 503
    assert json.loads(b"".join(failing.written))["reason"] == "database: storage is failing; retry"
    hanging = _render(HealthResource(_Db(Deferred()), clock))
    assert not hanging.finished
    clock.advance(2.5)
    assert hanging.finished and hanging.responseCode == 503
    assert json.loads(b"".join(hanging.written))["reason"] == "database: timed out"


def test_status_json(server: ServerProcess, bus: Client, stream_name: str) -> None:
    bus.create_stream(stream_name)
    bus.write_events(stream_name, [1, 2, 3])
    status, _, body = get(server, "/status.json")
    data = json.loads(body)
    mine = next(s for s in data["streams"] if s["name"] == stream_name)
    assert (mine["unprocessed"], mine["total"]) == (3, 3)
    assert len(data["connections"]) >= 1


class _StreamRows(HTMLParser):
    """Collects the streams table: {stream: {status: count}}."""

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, int]] = {}
        self._stream: str | None = None
        self._status: str | None = None
        self.connections_table = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-stream") is not None:
            self._stream = a["data-stream"]
            self.rows[self._stream] = {}
        elif tag == "td" and self._stream is not None and a.get("data-status"):
            self._status = a["data-status"]
        elif tag == "table" and a.get("id") == "connections":
            self.connections_table = True

    def handle_data(self, data: str) -> None:
        if self._stream is not None and self._status is not None:
            self.rows[self._stream][self._status] = int(data.replace(",", ""))
            self._status = None

    def handle_endtag(self, tag: str) -> None:
        if tag == "tr":
            self._stream = None


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed (.ci/run installs it)")
        pytest.skip("chromium is not installed: apt-get install -y chromium")
    return found


def _browse(tmp_path: Path, url: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
            f"--user-data-dir={tmp_path / 'chromium-profile'}", "--window-size=1280,1100",
            "--hide-scrollbars", *args, url,
        ],
        capture_output=True,
        timeout=90,
    )


def test_status_page_in_a_browser(server: ServerProcess, bus: Client, tmp_path: Path) -> None:
    chromium = _chromium()
    assert chromium
    odd = "billing <&> \"quoted\""  # names are escaped, not markup
    for name, count in (("orders-page", 7), (odd, 2)):
        try:
            bus.create_stream(name)
        except StreamExists:
            bus.delete_stream(name)
            bus.create_stream(name)
        bus.write_events(name, list(range(count)))
    page = bus.process_events("orders-page", limit=3, lease_seconds=60)
    for event in page.events[:2]:
        bus.mark_event(event.id, 1, lease_id=event.lease_id)
    bus.mark_event(page.events[2].id, 2, lease_id=page.events[2].lease_id)

    url = f"http://127.0.0.1:{server.admin_port}/"
    dumped = _browse(tmp_path, url, "--dump-dom")
    assert dumped.returncode == 0, dumped.stderr.decode(errors="replace")[-2000:]
    dom = dumped.stdout.decode("utf-8")
    rows = _StreamRows()
    rows.feed(dom)
    assert rows.rows["orders-page"] == {
        "unprocessed": 4, "retry": 1, "leased": 0, "processed": 2, "dead": 0, "total": 7
    }
    assert rows.rows[odd]["unprocessed"] == 2
    assert "<b>" not in dom.split("<body", 1)[1].replace("<b>&", "")  # no injected markup
    assert rows.connections_table  # our client is connected
    assert re.search(r"<svg[^>]*class=\"chart\"", dom)
    assert "Events written per second" in dom and "Events processed per second" in dom

    ARTIFACTS.mkdir(exist_ok=True)
    shot = ARTIFACTS / "status-page.png"
    shot.unlink(missing_ok=True)
    taken = _browse(tmp_path, url, f"--screenshot={shot}")
    assert taken.returncode == 0, taken.stderr.decode(errors="replace")[-2000:]
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 10_000


def test_json_logs(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path / "json-logs", extra_args=("--log-format", "json")).start()
    try:
        with Client(f"127.0.0.1:{proc.port}", CREDS["client_id"], CREDS["client_secret"]) as c:
            c.health()
    finally:
        proc.stop()
    lines = [line for line in proc.log_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "namespace", "message"} <= r.keys() for r in records)
    assert any(r["message"] == f"BusFactory starting on {proc.port}" for r in records)
    assert all(r["time"].endswith("Z") for r in records)
    assert not any("admin listening" in r["message"] for r in records)  # off by default


def test_bad_options_stop_start_up(tmp_path: Path) -> None:
    for args in (("--log-format", "xml"), ("--admin", "nonsense:1")):
        proc = ServerProcess(tmp_path / args[0].strip("-"), extra_args=args)
        with pytest.raises(RuntimeError, match="server exited with 2"):
            proc.start(timeout=20)


def test_outcomes_counted_by_the_metrics() -> None:
    """ok, the error code, or ``unanswered`` (a write whose outcome is
    unknown: its connection is closed, nothing sent for it)."""
    from eventbus.metrics import outcome_of
    from eventbus.responses import UNANSWERED

    assert outcome_of(b'{"operation":"health","status":true}') == "ok"
    assert outcome_of(b'{"operation":"x","status":false,"code":"unavailable","reason":"r"}') == "unavailable"
    assert outcome_of(UNANSWERED) == "unanswered"
    assert outcome_of(b"") == "unknown"


def test_metered_dispatcher_counts_answering_requests_however_they_answer() -> None:
    """A write answers later through its callback, or refuses at once with a
    line: the metrics count both."""
    from eventbus.metrics import MeteredDispatcher, Metrics
    from eventbus.operations import Request

    later: list[Any] = []

    class _Inner:
        def prepare(self, line: bytes, memo: Any = None) -> Request:
            if line == b"now":
                return Request(
                    "write_event",
                    "write",
                    False,
                    lambda answer: b'{"status":false,"code":"unavailable"}\n',
                    answers=True,
                )
            return Request("write_event", "write", False, lambda answer: later.append(answer), answers=True)

    metrics = Metrics()
    dispatcher = MeteredDispatcher(_Inner(), metrics)
    answered: list[bytes] = []
    assert dispatcher.prepare(b"later").run(answered.append) is None
    assert dispatcher.prepare(b"now").run(answered.append) == b'{"status":false,"code":"unavailable"}\n'
    later[0](b'{"status":true}\n')
    assert answered == [b'{"status":true}\n']
    counted = {
        (s.labels["operation"], s.labels["outcome"]): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
        if s.name == "eventbus_requests_total"
    }
    assert counted == {("write_event", "ok"): 1.0, ("write_event", "unavailable"): 1.0}
