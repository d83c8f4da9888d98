"""Starting the server: configuration errors, overrides, daemon mode, and the
README's sample requests against a fresh server."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from eventbus.tap import Options
from tests.busclient import LineClient
from tests.servers import ROOT, TEST_CLIENTS, TWISTD, ServerProcess

_PORT = re.compile(rb"BusFactory(?: \(TLS\))? starting on (\d+)")
LOCAL = "tcp:0:interface=127.0.0.1"

#: The original Go service's config/config.yaml, as its users have it.
ORIGINAL_CONFIG = """\
logger:
  level: "info"
  output:
    - "stdout"

auth:
  go-client:
    client_id: "dope_go_client_id"
    client_secret: "dope_go_client_secret"
  expenses-rest-api-client:
    client_id: "dope_expenses_rest_api_client_id"
    client_secret: "dope_expenses_rest_api_client_secret"
"""


def twistd(*args: str, cwd: Path = ROOT, timeout: float = 30) -> subprocess.CompletedProcess:
    """Run twistd in the foreground to completion (start-up failures)."""
    return subprocess.run(
        [TWISTD, "-n", "--pidfile=", "--logfile=-", "eventbus", *args],
        cwd=cwd,
        capture_output=True,
        timeout=timeout,
    )


def wait_for(predicate: Any, what: str, timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


# -- configuration errors stop start-up with one line ----------------------------------------


def _expect_one_line_failure(
    tmp_path: Path, config: Path, *fragments: str, options: bool = True, process: bool = False
) -> str:
    """Start-up must fail at once with one stderr line naming the file.

    ``options``: pass --listen and --database (which would hide the
    config's own). ``process``: run twistd itself; otherwise parse the
    plugin's options in this process, the same code without the start-up
    cost (a few cases run through twistd in test_twistd_reports_*)."""
    args = ["--config", str(config)]
    if options:
        args += ["--listen", LOCAL, "--database", f"sqlite:///{tmp_path / 'x.db'}"]
    if process:
        try:
            result = twistd(*args, timeout=15)
        except subprocess.TimeoutExpired:
            raise AssertionError("the server started on an invalid configuration") from None
        assert result.returncode != 0
        stderr, stdout = result.stderr.decode(), result.stdout.decode()
    else:
        err = io.StringIO()
        with pytest.raises(SystemExit) as exit_, contextlib.redirect_stderr(err):
            Options().parseOptions(args)
        assert exit_.value.code not in (0, None)
        stderr, stdout = err.getvalue(), ""
    assert stderr.endswith("\n") and stderr.count("\n") == 1, f"not one line:\n{stderr}"
    assert "Traceback" not in stderr + stdout
    assert str(config) in stderr, "the message names the file"
    for fragment in fragments:
        assert fragment in stderr, stderr
    assert not (tmp_path / "x.db").exists(), "nothing started"
    return stderr


@pytest.mark.parametrize(
    ("name", "content", "fragment"),
    [
        ("missing.yaml", None, "not found"),
        ("directory.yaml", "", "cannot be read"),
        ("bad.yaml", "auth: [1, 2\n", "not valid YAML"),
        ("auth.yaml", "auth: {c: {client_id: i}}\n", "auth.c.client_secret"),
        ("listen.yaml", "server: {listen: 'bogus:1', database: 'sqlite:///:memory:'}\n", "server.listen"),
    ],
    ids=lambda v: v if isinstance(v, str) and v.endswith(".yaml") else "",
)
def test_twistd_reports_config_errors_in_one_line(
    tmp_path: Path, name: str, content: str | None, fragment: str
) -> None:
    path = tmp_path / name
    if name == "directory.yaml":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
    _expect_one_line_failure(tmp_path, path, fragment, options=name != "listen.yaml", process=True)


def test_missing_config_file(tmp_path: Path) -> None:
    _expect_one_line_failure(tmp_path, tmp_path / "nope.yaml", "not found")


def test_unreadable_config_file(tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root (chmod would not do).
    directory = tmp_path / "config.yaml"
    directory.mkdir()
    _expect_one_line_failure(tmp_path, directory, "cannot be read")


def test_config_file_that_is_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes('auth:\n  c:\n    client_id: "caf\xe9"\n'.encode("latin-1"))
    _expect_one_line_failure(tmp_path, path, "UTF-8")


@pytest.mark.parametrize(
    "text",
    ["auth: [1, 2\n", "auth:\n  c:\n client_id: x\n    y: z\n", "logger: {level: info\n", "\tauth: {}\n"],
    ids=["unclosed", "indentation", "flow", "tab"],
)
def test_invalid_yaml(tmp_path: Path, text: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    _expect_one_line_failure(tmp_path, path, "not valid YAML")


@pytest.mark.parametrize(
    ("auth", "fragment"),
    [
        ([{"client_id": "a", "client_secret": "b"}], "'auth' must be a mapping"),
        ("clients", "'auth' must be a mapping"),
        ({"c": "id:secret"}, "auth.c must be a mapping"),
        ({"c": {"client_secret": "s"}}, "auth.c.client_id"),
        ({"c": {"client_id": "i"}}, "auth.c.client_secret"),
        ({"c": {"client_id": "", "client_secret": "s"}}, "auth.c.client_id"),
        ({"c": {"client_id": 5, "client_secret": "s"}}, "auth.c.client_id"),
        ({"c": {"client_id": "i", "client_secret": ["s"]}}, "auth.c.client_secret"),
        (
            {
                "a": {"client_id": "same", "client_secret": "1"},
                "b": {"client_id": "same", "client_secret": "2"},
            },
            "auth.b.client_id",
        ),
        ({"c": {"client_id": "i", "client_secret": "s", "streams": "orders"}}, "auth.c.streams"),
    ],
    ids=lambda v: repr(v)[:30],
)
def test_invalid_auth_section(tmp_path: Path, auth: Any, fragment: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"auth": auth}))
    _expect_one_line_failure(tmp_path, path, fragment)


@pytest.mark.parametrize(
    ("config", "fragment"),
    [
        ("[1, 2]", "top level must be a mapping"),
        ("server: 5", "'server' must be a mapping"),
        ("server: {max_page: -1}", "server.max_page"),
        ("server: {no_such_setting: 1}", "server.no_such_setting"),
        ("server: {listen: 8080}", "server.listen"),
        ("logger: {level: loud}", "logger.level"),
    ],
)
def test_invalid_settings(tmp_path: Path, config: str, fragment: str) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(config + "\n")
    _expect_one_line_failure(tmp_path, path, fragment)


@pytest.mark.parametrize(
    ("setting", "fragment"),
    [
        ({"listen": "bogus:8080"}, "server.listen 'bogus:8080'"),
        ({"listen": "tcp:eighty"}, "server.listen 'tcp:eighty'"),
        ({"listen": "ssl:0:privateKey=/no/such/key.pem"}, "/no/such/key.pem"),
        ({"database": "nosuchdb://x"}, "server.database 'nosuchdb://x'"),
        ({"database": "not a url"}, "server.database 'not a url'"),
    ],
    ids=lambda v: repr(v)[:40],
)
def test_invalid_listen_or_database_in_the_config(
    tmp_path: Path, setting: dict[str, str], fragment: str
) -> None:
    """Endpoint strings and database URLs are checked before start-up, so a
    bad one is one line too, not a traceback."""
    path = tmp_path / "config.yaml"
    server = {"listen": LOCAL, "database": f"sqlite:///{tmp_path / 'x.db'}", **setting}
    path.write_text(yaml.safe_dump({"auth": TEST_CLIENTS, "server": server}))
    _expect_one_line_failure(tmp_path, path, fragment, options=False)


@pytest.mark.parametrize(
    ("option", "value"),
    [("--listen", "bogus:8080"), ("--listen", "tcp:eighty"), ("--database", "nosuchdb://x")],
)
def test_invalid_command_line_values(tmp_path: Path, option: str, value: str) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(ORIGINAL_CONFIG)
    args = {"--listen": LOCAL, "--database": f"sqlite:///{tmp_path / 'x.db'}", option: value}
    result = twistd("--config", str(config), *(part for pair in args.items() for part in pair), timeout=15)
    assert result.returncode != 0
    stderr = result.stderr.decode()
    assert stderr.count("\n") == 1 and option in stderr and value in stderr, stderr
    assert "Traceback" not in stderr + result.stdout.decode()


def test_empty_config_starts_with_no_clients(tmp_path: Path) -> None:
    """An empty file is a valid (if useless) config: every auth fails."""
    proc = ServerProcess(tmp_path, auth={})
    proc.config_path.write_text("")
    proc.start()
    try:
        with LineClient(proc.port) as c:
            assert c.request("health", auth=None)["status"] is True
            assert c.request("list_streams")["code"] == "unauthorized"
    finally:
        proc.stop()


# -- the original's configuration format ------------------------------------------------------


def test_original_config_loads_and_both_clients_work(tmp_path: Path) -> None:
    proc = ServerProcess(tmp_path)
    proc.config_path.write_text(ORIGINAL_CONFIG)
    proc.start()
    try:
        with LineClient(proc.port) as c:
            for name, creds in TEST_CLIENTS.items():
                stream = c.call("create_stream", {"stream_name": f"from-{name}"}, auth=creds)["stream"]
                assert stream["name"] == f"from-{name}"
            wrong = {
                "client_id": "dope_go_client_id",
                "client_secret": "dope_expenses_rest_api_client_secret",
            }
            assert c.request("list_streams", auth=wrong)["code"] == "unauthorized"
    finally:
        proc.stop()


def test_default_config_file_keeps_the_originals_clients() -> None:
    """config/config.yaml, the default, works with the original's samples."""
    raw = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    pairs = {(c["client_id"], c["client_secret"]) for c in raw["auth"].values()}
    assert {(c["client_id"], c["client_secret"]) for c in TEST_CLIENTS.values()} <= pairs


# -- command line over config file --------------------------------------------------------------


def test_command_line_overrides_the_config_server_section(tmp_path: Path) -> None:
    """The config names an unusable port and database; the command line's
    win, so the server starts on them."""
    proc = ServerProcess(tmp_path)
    proc.config_path.write_text(
        yaml.safe_dump(
            {
                "auth": TEST_CLIENTS,
                "server": {
                    "listen": "tcp:1:interface=127.0.0.1",
                    "database": f"sqlite:///{tmp_path / 'missing-dir' / 'never.db'}",
                },
            }
        )
    )
    proc.start()
    try:
        with LineClient(proc.port) as c:
            c.call("create_stream", {"stream_name": "here"})
        assert (tmp_path / "eventbus.db").exists()
        assert not (tmp_path / "missing-dir").exists()
    finally:
        proc.stop()


def test_config_server_section_is_used_without_options(tmp_path: Path) -> None:
    db = tmp_path / "from-config.db"
    config = tmp_path / "config.yaml"
    config.write_text(
        yaml.safe_dump({"auth": TEST_CLIENTS, "server": {"listen": LOCAL, "database": f"sqlite:///{db}"}})
    )
    log = tmp_path / "out.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TWISTD, "-n", "--pidfile=", "--logfile=-", "eventbus", "--config", str(config)],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        port = int(wait_for(lambda: _PORT.search(log.read_bytes()), "the server to listen").group(1))
        with LineClient(port) as c:
            c.call("create_stream", {"stream_name": "configured"})
        assert db.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


# -- the log's level -------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _connected(port: int) -> LineClient | None:
    try:
        return LineClient(port)
    except ConnectionRefusedError:
        return None


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_the_configured_log_level_leaves_out_lower_levels(tmp_path: Path, log_format: str) -> None:
    """``logger.level: warn``: the warning about a client's unknown operation
    is written; the info lines (listening, the shutdown) are not. (At the
    default, info, they are: every server the tests start is found by its
    'starting on' line.)"""
    port = _free_port()  # the line that would name it is left out
    config = tmp_path / "config.yaml"
    odd = {"client_id": "odd", "client_secret": "s", "operations": ["list_streams", "no_such_operation"]}
    server = {"listen": f"tcp:{port}:interface=127.0.0.1", "database": f"sqlite:///{tmp_path / 'x.db'}"}
    config.write_text(
        yaml.safe_dump({"logger": {"level": "warn"}, "auth": {**TEST_CLIENTS, "odd": odd}, "server": server})
    )
    log = tmp_path / "out.log"
    argv = [TWISTD, "-n", "--pidfile=", "--logfile=-", "eventbus", "--config", str(config)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [*argv, "--log-format", log_format],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        with wait_for(lambda: _connected(port), "the server to listen") as c:
            assert c.call("create_stream", {"stream_name": "quiet"})["stream"]["name"] == "quiet"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
    text = log.read_text()
    assert "client odd: no such operations: no_such_operation" in text
    for info in ("starting on", "shutdown: all requests answered", "database closed"):
        assert info not in text, text
    if log_format == "json":
        levels = {json.loads(line)["level"] for line in text.splitlines() if line.strip()}
        assert levels == {"warn"}


@pytest.mark.parametrize("twistd_option", ["--syslog", "--logger=twisted.logger.jsonFileLogObserver"])
def test_json_logs_with_twistds_own_logger_is_refused(tmp_path: Path, twistd_option: str) -> None:
    """twistd's --logger or --syslog decides the log's format: asked for
    JSON too, start-up stops with one line rather than ignore either."""
    database = f"sqlite:///{tmp_path / 'x.db'}"
    argv = [TWISTD, "-n", "--pidfile=", twistd_option, "eventbus", "--listen", LOCAL, "--database", database]
    result = subprocess.run([*argv, "--log-format", "json"], cwd=ROOT, capture_output=True, timeout=30)
    stderr = result.stderr.decode()
    assert result.returncode == 2
    assert stderr.count("\n") == 1 and "--log-format json" in stderr, stderr
    assert not (tmp_path / "x.db").exists()


def test_the_level_filter_keeps_events_that_carry_no_level() -> None:
    from twisted.logger import LogLevel, PredicateResult

    from eventbus.logs import AtLeast

    warn = AtLeast(LogLevel.warn)
    assert warn({"log_level": LogLevel.info}) is PredicateResult.no
    assert warn({"log_level": LogLevel.warn}) is PredicateResult.maybe
    assert warn({"log_level": LogLevel.critical}) is PredicateResult.maybe
    assert warn({"log_format": "no level"}) is PredicateResult.maybe


# -- daemon mode -----------------------------------------------------------------------------


@pytest.fixture
def daemon_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path
    pidfile = tmp_path / "eventbus.pid"
    if pidfile.exists():  # the test failed half-way: do not leave it running
        try:
            os.kill(int(pidfile.read_text()), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass


def _gone(pid: int) -> bool:
    """True once ``pid`` has exited (a zombie left to an init that does not
    reap counts as exited)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def test_daemon_starts_and_kill_stops_it_gracefully(daemon_dir: Path) -> None:
    pidfile, logfile = daemon_dir / "eventbus.pid", daemon_dir / "eventbus.log"
    config = daemon_dir / "config.yaml"
    config.write_text(ORIGINAL_CONFIG)
    started = subprocess.run(
        [
            TWISTD,
            "--pidfile",
            str(pidfile),
            "--logfile",
            str(logfile),
            "eventbus",
            "--config",
            str(config),
            "--listen",
            LOCAL,
            "--database",
            f"sqlite:///{daemon_dir / 'eventbus.db'}",
        ],
        cwd=ROOT,
        capture_output=True,
        timeout=30,
    )
    assert started.returncode == 0, started.stderr.decode()
    pid = int(wait_for(lambda: pidfile.exists() and pidfile.read_text().strip(), "the pidfile"))
    port = int(wait_for(lambda: logfile.exists() and _PORT.search(logfile.read_bytes()), "the port").group(1))
    with LineClient(port) as c:
        c.call("create_stream", {"stream_name": "daemonized"})
        event = c.call("write_event", {"stream_name": "daemonized", "event": {"kept": True}})["event"]
    # SIGUSR1 starts a new log file, as twistd's own log does (rotation tools).
    os.kill(pid, signal.SIGUSR1)
    rotated = daemon_dir / "eventbus.log.1"
    wait_for(lambda: rotated.exists(), "the log to be rotated")
    assert _PORT.search(rotated.read_bytes())
    # Exactly as the README says.
    subprocess.run(["sh", "-c", f"kill $(cat {pidfile})"], check=True, timeout=10)
    wait_for(lambda: _gone(pid), "the daemon to exit")
    assert not pidfile.exists(), "twistd removes its pidfile on a clean stop"
    log = logfile.read_text()
    assert "database closed" in log
    assert "Traceback" not in log
    # What it acknowledged is on disk.
    proc = ServerProcess(daemon_dir / "again", database=f"sqlite:///{daemon_dir / 'eventbus.db'}").start()
    try:
        with LineClient(proc.port) as c:
            assert c.call("get_stream_events", {"stream_name": "daemonized"})["events"] == [event]
    finally:
        proc.stop()


# -- the README's sample requests ------------------------------------------------------------------


def readme_samples() -> list[str]:
    """The request lines of README.rst's sample block, blank lines kept
    (they are pasted into nc as they are)."""
    text = (ROOT / "README.rst").read_text()
    start = text.index("Sample requests")
    block = text[text.index("::\n", start) + 3 :]
    out: list[str] = []
    for line in block.splitlines():
        if line and not line.startswith((" ", "\t")):
            break  # the end of the literal block
        out.append(line.strip())
    while out and not out[0]:
        out.pop(0)
    while out and not out[-1]:
        out.pop()
    return out


def expected_response(request: dict[str, Any]) -> dict[str, Any] | None:
    """What PROTOCOL.md says a fresh server answers to each sample, given
    the samples before it (None: a success whose body is checked apart)."""
    op, body = request["operation"], request.get("body", {})
    deleted = {"steve", "john"}
    name = body.get("stream_name")
    if op in ("health", "exit"):
        return {"operation": op, "status": True}
    if op == "delete_stream":
        return {"operation": op, "status": True}
    if op == "create_stream":
        return None
    if name in deleted:
        return {
            "operation": op,
            "status": False,
            "reason": f"stream '{name}' not found",
            "code": "stream_not_found",
        }
    if op == "mark_event":
        event_id = body["event_id"]
        return {
            "operation": op,
            "status": False,
            "reason": f"event '{event_id}' not found",
            "code": "event_not_found",
        }
    raise AssertionError(f"no expectation for {request}")


def test_readme_samples_answer_as_the_protocol_says(tmp_path: Path) -> None:
    lines = readme_samples()
    requests = [json.loads(line) for line in lines if line]
    assert [r["operation"] for r in requests][:1] == ["health"] and requests[-1]["operation"] == "exit"
    assert len(requests) >= 20, "the sample block was not found whole"
    proc = ServerProcess(tmp_path)
    proc.config_path = ROOT / "config" / "config.yaml"  # the default config, as `make run` uses
    proc.start()
    try:
        with LineClient(proc.port) as c:
            # Pasted into nc all at once, blank lines and all.
            c.send_raw("\n".join(lines).encode() + b"\n")
            responses = [c.read() for _ in requests]
            assert c.is_closed(), "exit closes the connection"
    finally:
        proc.stop()
    for request, response in zip(requests, responses):
        expected = expected_response(request)
        if expected is None:
            assert response["operation"] == "create_stream" and response["status"] is True, response
            assert response["body"]["stream"]["name"] == request["body"]["stream_name"]
        else:
            assert response == expected, request
