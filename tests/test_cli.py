"""The ``eventbus`` command line against a real server: output, JSON, exit codes."""

from __future__ import annotations

import io
import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventbus.cli import EXIT_CONNECTION, EXIT_INPUT, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, main
from eventbus.cli.settings import Settings, SettingsError, resolve
from eventbus.secrets import verify_secret
from tests.servers import ROOT, TEST_CLIENTS, ServerProcess

CREDS = TEST_CLIENTS["go-client"]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    proc = ServerProcess(tmp_path_factory.mktemp("cli-server")).start()
    yield proc
    proc.stop()


@pytest.fixture
def env(server: ServerProcess, tmp_path: Path) -> dict[str, str]:
    return {
        "EVENTBUS_ADDRESS": f"127.0.0.1:{server.port}",
        "EVENTBUS_CLIENT_ID": CREDS["client_id"],
        "EVENTBUS_CLIENT_SECRET": CREDS["client_secret"],
        "HOME": str(tmp_path),  # no stray ~/.config/eventbus/cli.yaml
    }


class Result:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> Any:
        return json.loads(self.out)


def run(env: dict[str, str], *argv: str, stdin: str = "") -> Result:
    """The CLI in this process (fast); streams are not terminals."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdin=io.StringIO(stdin), stdout=out, stderr=err, env=env)
    return Result(code, out.getvalue(), err.getvalue())


def spawn(env: dict[str, str], *argv: str, **kw: Any) -> subprocess.CompletedProcess:
    """The CLI as a program, the way a shell runs it."""
    return subprocess.run(
        [sys.executable, "-m", "eventbus.cli", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def test_console_script_is_installed() -> None:
    script = Path(sys.executable).parent / "eventbus"
    assert script.exists(), "make install puts the eventbus command in .venv/bin"
    assert subprocess.run([str(script), "--help"], capture_output=True).returncode == EXIT_OK
    assert subprocess.run([str(script), "no-such-command"], capture_output=True).returncode == EXIT_USAGE


def test_stream_lifecycle_with_json(env: dict[str, str], stream_name: str) -> None:
    assert run(env, "health").code == EXIT_OK
    created = run(env, "--json", "create", stream_name, "--max-deliveries", "3", "--retention", "7d")
    assert created.code == EXIT_OK
    assert created.json()["stream"]["retention_seconds"] == 7 * 86400

    again = run(env, "create", stream_name, "--json")
    assert again.code == EXIT_REFUSED
    assert again.json() == {
        "error": {"code": "stream_exists", "reason": f"stream: '{stream_name}' already exists"}
    }
    assert "(stream_exists)" in again.err

    one = run(env, "write", stream_name, '{"id": 1}', "--key", "k1", "--json").json()
    dup = run(env, "write", stream_name, '{"id": 1}', "--key", "k1", "--json").json()
    assert dup["duplicate"] is True and dup["event"]["id"] == one["event"]["id"]
    many = run(env, "--json", "write", stream_name, "2", '"three"', "[4]").json()["events"]
    assert [e["body"] for e in many] == [2, "three", [4]]

    listed = run(env, "events", stream_name, "--json").json()
    assert [e["body"] for e in listed["events"]] == [{"id": 1}, 2, "three", [4]]
    assert listed["next_after_seq"] is None
    first_page = run(env, "events", stream_name, "-n", "3", "--json").json()
    assert len(first_page["events"]) == 3 and first_page["next_after_seq"] == listed["events"][2]["seq"]

    ids = [e["id"] for e in listed["events"]]
    assert run(env, "mark", ids[0], "processed").code == EXIT_OK
    assert run(env, "mark", ids[1], ids[2], "retry").code == EXIT_OK
    retry = run(env, "events", stream_name, "--status", "retry", "--json").json()["events"]
    assert [e["id"] for e in retry] == ids[1:3]
    unprocessed = run(env, "events", stream_name, "-s", "0", "--json").json()["events"]
    assert [e["id"] for e in unprocessed] == [ids[3]]

    stats = run(env, "stats", stream_name, "--json").json()
    assert stats["stats"] == {
        "unprocessed": 1, "processed": 1, "retry": 2, "dead": 0, "leased": 0, "total": 4
    }
    human = run(env, "stats", stream_name).out
    assert "retry:          2" in human and "max deliveries: 3" in human

    leased = run(env, "process", stream_name, "--lease", "30", "--json").json()["events"]
    assert leased[0]["lease_id"]
    lost = run(env, "mark", leased[0]["id"], "1", "--lease-id", "not-the-lease", "--json")
    assert lost.code == EXIT_REFUSED and lost.json()["error"]["code"] == "lease_lost"

    assert run(env, "delete", stream_name, "--json").json() == {"deleted": stream_name}
    gone = run(env, "stats", stream_name)
    assert gone.code == EXIT_REFUSED and "stream_not_found" in gone.err


def test_streams_table(env: dict[str, str], stream_name: str) -> None:
    run(env, "create", stream_name)
    run(env, "write", stream_name, "1", "2", "3")
    table = run(env, "streams").out.splitlines()
    assert table[0].split() == [
        "NAME", "UNPROCESSED", "RETRY", "LEASED", "PROCESSED", "DEAD", "TOTAL", "CREATED", "(UTC)"
    ]
    row = next(line for line in table if line.startswith(stream_name + " "))
    assert row.split()[1:7] == ["3", "0", "0", "0", "0", "3"]
    listed = run(env, "streams", "--json").json()["streams"]
    mine = next(s for s in listed if s["name"] == stream_name)
    assert mine["stats"]["total"] == 3


def test_write_from_file_then_export(env: dict[str, str], stream_name: str, tmp_path: Path) -> None:
    run(env, "create", stream_name)
    source = tmp_path / "events.jsonl"
    lines = [json.dumps({"n": n, "text": "é"}) for n in range(2500)]
    source.write_text("\n".join(lines[:1000]) + "\n\n" + "\n".join(lines[1000:]) + "\n")
    written = run(env, "write", stream_name, "--from", str(source), "--batch", "1000", "--json")
    assert written.code == EXIT_OK
    assert written.json()["written"] == 2500
    assert written.err == ""  # not a terminal: no progress bar

    exported = spawn(env, "export", stream_name, "--bodies")
    assert exported.returncode == EXIT_OK and exported.stderr == ""
    assert [json.loads(line) for line in exported.stdout.splitlines()] == [json.loads(x) for x in lines]

    target = tmp_path / "full.jsonl"
    assert run(env, "export", stream_name, "-o", str(target)).code == EXIT_OK
    events = [json.loads(line) for line in target.read_text().splitlines()]
    assert len(events) == 2500 and events[0]["status"] == 0 and events[-1]["body"] == {"n": 2499, "text": "é"}

    # From stdin, to another stream: the round trip.
    other = stream_name + "-copy"
    run(env, "create", other)
    copied = run(env, "write", other, "--from", "-", stdin=exported.stdout)
    assert copied.code == EXIT_OK and copied.out.startswith("wrote 2500 events")


def test_write_from_bad_file_stops_at_the_bad_line(
    env: dict[str, str], stream_name: str, tmp_path: Path
) -> None:
    run(env, "create", stream_name)
    source = tmp_path / "bad.jsonl"
    source.write_text('{"ok": 1}\n{"ok": 2}\n{not json\n{"ok": 4}\n')
    result = run(env, "write", stream_name, "--from", str(source))
    assert result.code == EXIT_INPUT
    assert "bad.jsonl:3: not valid JSON; 2 events before it were written" in result.err
    assert run(env, "stats", stream_name, "--json").json()["stats"]["total"] == 2
    missing = run(env, "write", stream_name, "--from", str(tmp_path / "missing.jsonl"))
    assert missing.code == EXIT_INPUT


def test_usage_errors(env: dict[str, str], stream_name: str) -> None:
    assert run(env, "write", stream_name, "not json").code == EXIT_USAGE
    assert run(env, "write", stream_name).code == EXIT_USAGE
    assert run(env, "mark", "only-an-id").code == EXIT_USAGE
    assert run(env, "mark", "some-id", "finished").code == EXIT_USAGE
    assert run(env, "events", stream_name, "--status", "finished").code == EXIT_USAGE
    assert run(env, "create", stream_name, "--retention", "soon").code == EXIT_USAGE
    assert run(env, "--profile", "nope", "streams").code == EXIT_USAGE


def test_mark_ids_from_stdin(env: dict[str, str], stream_name: str) -> None:
    run(env, "create", stream_name)
    ids = [e["id"] for e in run(env, "write", stream_name, "1", "2", "3", "--json").json()["events"]]
    done = run(env, "mark", "-", "dead", "--json", stdin="\n".join(ids) + "\n")
    assert done.json() == {"marked": 3, "not_found": [], "lease_lost": []}
    partly = run(env, "mark", ids[0], "missing-id", "0")
    assert partly.code == EXIT_REFUSED and "not found: missing-id" in partly.out
    statuses = [e["status"] for e in run(env, "events", stream_name, "--json").json()["events"]]
    assert statuses == [0, 3, 3]


def test_connection_failure_is_exit_3(env: dict[str, str]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        env = {**env, "EVENTBUS_ADDRESS": f"127.0.0.1:{s.getsockname()[1]}"}
        result = run(env, "--json", "streams")
    assert result.code == EXIT_CONNECTION
    assert result.json()["error"]["code"] == "connection"


def test_wrong_secret_is_refused(env: dict[str, str]) -> None:
    result = run({**env, "EVENTBUS_CLIENT_SECRET": "wrong"}, "streams")
    assert result.code == EXIT_REFUSED and "(unauthorized)" in result.err


def test_settings_precedence(tmp_path: Path) -> None:
    profiles = tmp_path / "cli.yaml"
    profiles.write_text(
        "default: local\n"
        "profiles:\n"
        "  local: {address: 'file-host:1', client_id: file-id, client_secret: file-secret}\n"
        "  prod: {address: 'tls://prod:9', ca_file: /ca.pem, timeout: 5}\n"
    )
    env = {"HOME": str(tmp_path), "EVENTBUS_PROFILE_FILE": str(profiles)}
    assert resolve({}, env) == Settings("file-host:1", "file-id", "file-secret")
    assert resolve({}, {**env, "EVENTBUS_CLIENT_ID": "env-id"}).client_id == "env-id"
    assert resolve({"client_id": "flag-id"}, {**env, "EVENTBUS_CLIENT_ID": "env-id"}).client_id == "flag-id"
    prod = resolve({"profile": "prod"}, env)
    assert (prod.address, prod.ca_file, prod.timeout) == ("tls://prod:9", "/ca.pem", 5.0)
    assert prod.client_id is None
    # The default location, ~/.config/eventbus/cli.yaml, flat form.
    default = tmp_path / ".config" / "eventbus" / "cli.yaml"
    default.parent.mkdir(parents=True)
    default.write_text("address: home:2\ntls: true\n")
    home = resolve({}, {"HOME": str(tmp_path)})
    assert (home.address, home.tls) == ("home:2", True)
    assert resolve({}, {"HOME": str(tmp_path / "empty")}) == Settings()
    with pytest.raises(SettingsError):
        resolve({"profile": "staging"}, env)
    with pytest.raises(SettingsError):
        resolve({"profile_file": str(tmp_path / "missing.yaml")}, {})


def test_profile_file_flag_connects(env: dict[str, str], tmp_path: Path) -> None:
    profile = tmp_path / "p.yaml"
    profile.write_text(
        f"address: {env['EVENTBUS_ADDRESS']}\n"
        f"client_id: {CREDS['client_id']}\nclient_secret: {CREDS['client_secret']}\n"
    )
    result = run({"HOME": str(tmp_path)}, "--profile-file", str(profile), "streams", "--json")
    assert result.code == EXIT_OK and "streams" in result.json()


def test_tail_follows_new_events(env: dict[str, str], stream_name: str) -> None:
    run(env, "create", stream_name)
    other = stream_name + "-noise"
    run(env, "create", other)
    for n in range(5):  # interleaved with another stream: seqs have gaps
        run(env, "write", stream_name, str(n))
        run(env, "write", other, "0")
    proc = subprocess.Popen(
        [sys.executable, "-m", "eventbus.cli", "tail", stream_name, "-n", "2", "--count", "4", "--json"],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = [json.loads(proc.stdout.readline())["body"] for _ in range(2)]
        assert first == [3, 4]  # the last two
        run(env, "write", stream_name, '"new-1"')
        run(env, "write", stream_name, '"new-2"')
        rest = [json.loads(line)["body"] for line in proc.stdout]
        assert proc.wait(30) == EXIT_OK
    finally:
        proc.kill()
    assert rest == ["new-1", "new-2"]
    from_start = spawn(env, "tail", stream_name, "--from-start", "--count", "7")
    assert from_start.returncode == EXIT_OK and len(from_start.stdout.splitlines()) == 7


def test_tail_counts_back_past_one_page(tmp_path: Path) -> None:
    """``tail -n N`` with N more than the server sends in one page (its
    max_page, here 3), or than one request may ask for (10,000): it still
    starts N events from the end."""
    small = ServerProcess(tmp_path / "small-pages", server={"max_page": 3}).start()
    try:
        env = {
            "EVENTBUS_ADDRESS": f"127.0.0.1:{small.port}",
            "EVENTBUS_CLIENT_ID": CREDS["client_id"],
            "EVENTBUS_CLIENT_SECRET": CREDS["client_secret"],
            "HOME": str(tmp_path),
        }
        run(env, "create", "pages")
        run(env, "create", "noise")
        for n in range(12):  # interleaved with another stream: seqs have gaps
            assert run(env, "write", "pages", str(n)).code == EXIT_OK
            run(env, "write", "noise", "0")
        last5 = run(env, "tail", "pages", "-n", "5", "--count", "5", "--json")
        assert last5.code == EXIT_OK, last5.err
        assert [json.loads(line)["body"] for line in last5.out.splitlines()] == [7, 8, 9, 10, 11]
        every = run(env, "tail", "pages", "-n", "20000", "--count", "12", "--json")
        assert every.code == EXIT_OK, every.err
        assert [json.loads(line)["body"] for line in every.out.splitlines()] == list(range(12))
    finally:
        small.stop()


def test_progress_bar_only_on_a_terminal(env: dict[str, str], stream_name: str, tmp_path: Path) -> None:
    run(env, "create", stream_name)
    source = tmp_path / "events.jsonl"
    source.write_text("".join(f"{n}\n" for n in range(3000)))
    piped = spawn(env, "write", stream_name, "--from", str(source))
    assert piped.returncode == EXIT_OK and piped.stderr == ""
    leader, follower = pty.openpty()
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "eventbus.cli", "write", stream_name, "--from", str(source)],
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=subprocess.PIPE,
            stderr=follower,
            timeout=60,
        )
        os.close(follower)
        follower = -1
        drawn = b""
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(leader)
        if follower >= 0:
            os.close(follower)
    assert proc.returncode == EXIT_OK
    assert b"100% |" in drawn and b"3,000 events" in drawn
    assert proc.stdout.decode().startswith("wrote 3000 events")


def test_hash_secret(env: dict[str, str]) -> None:
    piped = run(env, "hash-secret", stdin="s3cret\n")
    assert piped.code == EXIT_OK
    hashed = piped.out.strip()
    assert hashed.startswith("scrypt$") and verify_secret("s3cret", hashed)
    as_json = run(env, "hash-secret", "other", "--json").json()
    assert verify_secret("other", as_json["client_secret"])
    assert run(env, "hash-secret", stdin="").code == EXIT_USAGE
