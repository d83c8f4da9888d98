"""Security: hashed secrets, constant cost of auth failures, slowing down
repeated failures, access control per client, TLS, and what the log keeps."""

from __future__ import annotations

import json
import re
import socket
import ssl
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from eventbus import secrets
from eventbus.auth import Authenticator
from eventbus.config import ClientConfig, ConfigError, parse
from eventbus.errors import BusError
from tests.busclient import LineClient
from tests.servers import ROOT, ServerProcess
from tests.tls import self_signed

PLAIN = {"client_id": "plain-id", "client_secret": "plain-secret-Q7"}
HASHED_SECRET = "hashed-secret-Z9"
HASHED = {"client_id": "hashed-id", "client_secret": HASHED_SECRET}


# -- the hashed form -----------------------------------------------------------------


def test_hash_format_and_verification() -> None:
    encoded = secrets.hash_secret("s3cret ü")
    parts = encoded.split("$")
    assert parts[:4] == ["scrypt", "16384", "8", "1"] and len(parts) == 6
    assert secrets.verify_secret("s3cret ü", encoded)
    assert not secrets.verify_secret("s3cret u", encoded)
    assert not secrets.verify_secret("", encoded)
    assert secrets.hash_secret("s3cret ü") != encoded  # salted


@pytest.mark.parametrize(
    "bad",
    [
        "scrypt$16384$8$1$c2FsdA",  # too few parts
        "scrypt$x$8$1$c2FsdA$" + "A" * 43,
        "scrypt$1000$8$1$c2FsdA$" + "A" * 43,  # N not a power of 2
        "scrypt$16384$8$99$c2FsdA$" + "A" * 43,  # p too large
        "scrypt$1073741824$8$1$c2FsdA$" + "A" * 43,  # would need 1 TiB
        "scrypt$16384$8$1$!!$" + "A" * 43,  # not base64
        "scrypt$16384$8$1$$" + "A" * 43,  # no salt
        "scrypt$16384$8$1$c2FsdA$QUJD",  # hash too short
    ],
)
def test_malformed_hash_in_config_is_refused_naming_the_client(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"auth\.svc\.client_secret"):
        parse({"auth": {"svc": {"client_id": "svc", "client_secret": bad}}})


def test_hash_command_prints_a_hash_of_stdin() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "eventbus.secrets"],
        input="top secret\n",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    encoded = done.stdout.strip()
    assert secrets.verify_secret("top secret", encoded)
    assert "top secret" not in done.stdout
    empty = subprocess.run(
        [sys.executable, "-m", "eventbus.secrets"],
        input="",
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=60,
    )
    assert empty.returncode == 2 and "empty" in empty.stderr


def test_eventbus_hash_secret_command() -> None:
    command = Path(sys.executable).parent / "eventbus"
    if not command.exists():
        pytest.skip("the eventbus command is not installed (make install)")
    done = subprocess.run(
        [str(command), "hash-secret"], input="top secret\n", capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    encoded = done.stdout.strip()
    assert secrets.verify_secret("top secret", encoded)
    # What it prints is accepted by the configuration, and works.
    config = parse({"auth": {"c": {"client_id": "c", "client_secret": encoded}}})
    assert Authenticator(config.clients).authenticate({"client_id": "c", "client_secret": "top secret"})


# -- authentication costs ------------------------------------------------------------------


@pytest.fixture
def scrypt_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, int, int, int]]:
    """Every scrypt derivation: (n, r, p, key length)."""
    calls: list[tuple[int, int, int, int]] = []
    real = secrets.ScryptHash.derive

    def derive(self: secrets.ScryptHash, secret: bytes) -> bytes:
        calls.append((self.n, self.r, self.p, len(self.key)))
        return real(self, secret)

    monkeypatch.setattr(secrets.ScryptHash, "derive", derive)
    return calls


def clients(hashed: str, n_plain: int = 0) -> tuple[ClientConfig, ...]:
    out = [ClientConfig("h", "hashed-id", hashed)]
    out += [ClientConfig(f"p{i}", f"plain-{i}", f"secret-{i}") for i in range(n_plain)]
    return tuple(out)


def refused(auth: Authenticator, client_id: str, secret: str) -> bool:
    try:
        auth.authenticate({"client_id": client_id, "client_secret": secret})
    except BusError as e:
        assert e.code == "unauthorized"
        return True
    return False


def test_successful_verifications_are_cached(scrypt_calls: list[Any]) -> None:
    auth = Authenticator(clients(secrets.hash_secret(HASHED_SECRET, n=2**10)))
    scrypt_calls.clear()
    for _ in range(50):
        assert auth.authenticate({"client_id": "hashed-id", "client_secret": HASHED_SECRET}).name == "h"
    assert len(scrypt_calls) == 1
    # Failures are never cached: each costs a full verification.
    for _ in range(3):
        assert refused(auth, "hashed-id", "nope")
    assert len(scrypt_calls) == 4


def test_unknown_id_costs_the_same_work_as_a_wrong_secret(scrypt_calls: list[Any]) -> None:
    auth = Authenticator(clients(secrets.hash_secret(HASHED_SECRET, n=2**12)))
    scrypt_calls.clear()
    assert refused(auth, "hashed-id", "wrong")
    assert refused(auth, "no-such-id", "wrong")
    assert refused(auth, "no-such-id", HASHED_SECRET)
    assert scrypt_calls == [(2**12, 8, 1, 32)] * 3


def test_unknown_id_costs_the_same_with_plain_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    import eventbus.auth as auth_module

    compared: list[tuple[int, int]] = []
    real = auth_module.hmac.compare_digest

    def compare(a: bytes, b: bytes) -> bool:
        compared.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth_module.hmac, "compare_digest", compare)
    auth = Authenticator(tuple(ClientConfig(f"p{i}", f"plain-{i}", f"secret-{i}") for i in range(3)))
    assert refused(auth, "plain-1", "wrong, and of another length")
    assert refused(auth, "nobody", "x")
    assert not refused(auth, "plain-1", "secret-1")
    # One fixed-length (digest) comparison each, whatever the id or the length.
    assert compared == [(32, 32)] * 3


def test_unknown_id_takes_as_long_as_a_wrong_secret() -> None:
    """Measured generously: an unknown id must not skip the slow check."""
    auth = Authenticator(clients(secrets.hash_secret(HASHED_SECRET)))

    def timed(client_id: str) -> float:
        samples = []
        for _ in range(5):
            started = time.perf_counter()
            refused(auth, client_id, "wrong")
            samples.append(time.perf_counter() - started)
        return statistics.median(samples)

    wrong, unknown = timed("hashed-id"), timed("no-such-id")
    assert unknown > wrong / 3, (wrong, unknown)


def test_plain_and_hashed_secrets_side_by_side() -> None:
    hashed = secrets.hash_secret(HASHED_SECRET, n=2**10)
    config = parse(
        {
            "auth": {
                "old": {"client_id": "plain-id", "client_secret": PLAIN["client_secret"]},
                "new": {"client_id": "hashed-id", "client_secret": hashed},
            }
        }
    )
    auth = Authenticator(config.clients)
    assert auth.authenticate(PLAIN).name == "old"
    assert auth.authenticate(HASHED).name == "new"
    # The hash itself is not a password.
    assert refused(auth, "hashed-id", hashed)
    assert "secret" not in repr(auth.authenticate(PLAIN))


def test_unknown_operation_names_in_a_client_list_are_warned_of() -> None:
    from twisted.logger import globalLogPublisher

    seen: list[str] = []

    def observe(event: dict[str, Any]) -> None:
        if event.get("log_format", "").startswith("client {name}: no such operations"):
            seen.append(f"{event['name']}: {event['unknown']}")

    globalLogPublisher.addObserver(observe)
    try:
        Authenticator(
            (ClientConfig("typo", "t", "s", operations=("write_evnt", "list_streams")),),
            operations=["write_event", "list_streams"],
        )
    finally:
        globalLogPublisher.removeObserver(observe)
    assert seen == ["typo: write_evnt"]


# -- over TCP ------------------------------------------------------------------------------------

ACL_CLIENTS = {
    "admin": {"client_id": "admin", "client_secret": "admin-secret"},
    "reporting": {
        "client_id": "reporting",
        "client_secret": "reporting-secret",
        "streams": ["orders", "audit-*"],
        "operations": ["get_stream_info", "get_stream_events", "list_streams"],
    },
    "writer": {
        "client_id": "writer",
        "client_secret": "writer-secret",
        "streams": ["orders", "a[1]"],
        "operations": [
            "create_stream",
            "write_event",
            "write_events",
            "process_events",
            "mark_event",
            "mark_events",
        ],
    },
    "nothing": {"client_id": "nothing", "client_secret": "nothing-secret", "streams": [], "operations": []},
}


def creds(name: str) -> dict[str, str]:
    c = ACL_CLIENTS[name]
    return {"client_id": c["client_id"], "client_secret": c["client_secret"]}


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    auth = dict(ACL_CLIENTS)
    auth["hashed"] = {"client_id": HASHED["client_id"], "client_secret": secrets.hash_secret(HASHED_SECRET)}
    proc = ServerProcess(tmp_path_factory.mktemp("acl"), auth=auth).start()
    yield proc
    proc.stop()


@pytest.fixture
def admin(acl_server: ServerProcess) -> Iterator[LineClient]:
    with LineClient(acl_server.port) as c:
        yield c


def test_hashed_secret_over_tcp(admin: LineClient) -> None:
    assert admin.request("list_streams", {}, auth=HASHED)["status"] is True
    wrong = dict(HASHED, client_secret="nope")
    assert admin.request("list_streams", {}, auth=wrong)["code"] == "unauthorized"
    assert admin.request("list_streams", {}, auth=creds("admin"))["status"] is True  # plain still works


def test_access_control(admin: LineClient) -> None:
    a = creds("admin")
    for name in ("orders", "audit-2026", "payments", "a[1]", "a1"):
        admin.call("create_stream", {"stream_name": name}, auth=a)
    order = admin.call("write_event", {"stream_name": "orders", "event": {"o": 1}}, auth=a)["event"]
    payment = admin.call("write_event", {"stream_name": "payments", "event": {"p": 1}}, auth=a)["event"]

    def ask(who: str, operation: str, body: Any) -> dict[str, Any]:
        return admin.request(operation, body, auth=creds(who))

    # The reporting client reads its streams, and nothing else.
    assert ask("reporting", "get_stream_info", {"stream_name": "orders"})["status"] is True
    assert ask("reporting", "get_stream_events", {"stream_name": "audit-2026"})["status"] is True
    response = ask("reporting", "get_stream_info", {"stream_name": "payments"})
    assert response == {
        "operation": "get_stream_info",
        "status": False,
        "reason": "client is not allowed to get_stream_info on stream 'payments'",
        "code": "forbidden",
    }
    assert ask("reporting", "write_event", {"stream_name": "orders", "event": 1})["code"] == "forbidden"
    assert ask("reporting", "delete_stream", {"stream_name": "orders"})["code"] == "forbidden"
    assert ask("reporting", "mark_event", {"event_id": order["id"], "status": 1})["code"] == "forbidden"
    listed = [s["name"] for s in ask("reporting", "list_streams", {})["body"]["streams"]]
    assert listed == ["audit-2026", "orders"]

    # The writer writes and consumes its streams; "a[1]" is a name as well as a pattern.
    assert ask("writer", "write_event", {"stream_name": "orders", "event": 2})["status"] is True
    assert ask("writer", "write_event", {"stream_name": "a[1]", "event": 3})["status"] is True
    assert ask("writer", "write_event", {"stream_name": "payments", "event": 4})["code"] == "forbidden"
    assert ask("writer", "create_stream", {"stream_name": "audit-x"})["code"] == "forbidden"
    assert ask("writer", "create_stream", {"stream_name": "orders"})["code"] == "stream_exists"
    assert ask("writer", "get_stream_events", {"stream_name": "orders"})["code"] == "forbidden"
    assert ask("writer", "list_streams", {})["code"] == "forbidden"
    leased = ask("writer", "process_events", {"stream_name": "payments", "lease_seconds": 30})
    assert leased["code"] == "forbidden"
    assert ask("writer", "write_events", {"stream_name": "payments", "events": [1]})["code"] == "forbidden"

    # Marks name events, not streams: an event of a stream the client may not
    # see does not exist for it, and is left alone.
    response = ask("writer", "mark_event", {"event_id": payment["id"], "status": 1})
    assert response["code"] == "event_not_found"
    response = ask("writer", "mark_events", {"event_ids": [payment["id"], order["id"]], "status": 1})
    assert response["status"] is True
    assert response["body"]["marked"] == 1 and response["body"]["not_found"] == [payment["id"]]
    statuses = {
        e["id"]: e["status"]
        for s in ("orders", "payments")
        for e in admin.call("get_stream_events", {"stream_name": s}, auth=a)["events"]
    }
    assert statuses[payment["id"]] == 0 and statuses[order["id"]] == 1

    # Empty lists: nothing at all; health and exit need no auth anyway.
    assert ask("nothing", "list_streams", {})["code"] == "forbidden"
    assert ask("nothing", "get_stream_info", {"stream_name": "orders"})["code"] == "forbidden"
    assert admin.request("health", auth=creds("nothing"))["status"] is True

    # Forbidden requests changed nothing; the default client may do everything.
    names = [s["name"] for s in admin.call("list_streams", {}, auth=a)["streams"]]
    assert names == ["a1", "a[1]", "audit-2026", "orders", "payments"]
    assert admin.call("delete_stream", {"stream_name": "a1"}, auth=a) is None


# -- slowing down repeated failures ------------------------------------------------------------


def test_repeated_failures_from_one_address_are_slowed_down(tmp_path: Path) -> None:
    server = ServerProcess(tmp_path / "srv", auth={"real": PLAIN}).start()
    wrong = dict(PLAIN, client_secret="guess")
    try:
        with LineClient(server.port, timeout=30) as attacker, LineClient(server.port) as real:
            started = time.monotonic()
            for _ in range(7):  # 3 free, then 0.1 + 0.2 + 0.4 + 0.8 s
                assert attacker.request("list_streams", {}, auth=wrong)["code"] == "unauthorized"
            assert time.monotonic() - started >= 1.2
            # The 8th failure waits 1.6 s; meanwhile the real client, at the
            # same address, is served as if nothing happened.
            attacker.send({"operation": "list_streams", "body": {}, "auth": wrong})
            assert real.request("list_streams", {}, auth=PLAIN)["status"] is True
            assert real.request("health", auth=None)["status"] is True
            attacker.sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                attacker.sock.recv(1)  # not answered yet
            attacker.sock.setblocking(True)
            assert attacker.read()["code"] == "unauthorized"
        log = server.log_text()
        assert "guess" not in log
        # Every failure is logged, the first three (not delayed) too.
        delays = re.findall(r"auth failure from 127\.0\.0\.1: answer delayed (\d+\.\d)s", log)
        assert delays == ["0.0", "0.0", "0.0", "0.1", "0.2", "0.4", "0.8", "1.6"]
    finally:
        server.stop()


# -- TLS -------------------------------------------------------------------------------------------


def test_tls(tmp_path: Path) -> None:
    key, cert = self_signed(tmp_path)
    listen = f"ssl:0:interface=127.0.0.1:privateKey={key}:certKey={cert}"
    server = ServerProcess(tmp_path / "srv", listen=listen, auth={"real": PLAIN}).start()
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.version() in ("TLSv1.2", "TLSv1.3")
                reader = tls.makefile("rb")
                requests = [
                    {"operation": "create_stream", "auth": PLAIN, "body": {"stream_name": "secure"}},
                    {
                        "operation": "write_event",
                        "auth": PLAIN,
                        "body": {"stream_name": "secure", "event": [1]},
                    },
                    {"operation": "get_stream_events", "auth": PLAIN, "body": {"stream_name": "secure"}},
                ]
                tls.sendall(b"".join(json.dumps(r).encode() + b"\n" for r in requests))
                answers = [json.loads(reader.readline()) for _ in requests]
                assert [a["status"] for a in answers] == [True, True, True]
                assert [e["body"] for e in answers[2]["body"]["events"]] == [[1]]
                try:
                    tls.sendall(b"x" * (2 * 1024 * 1024))  # limits hold under TLS too
                except OSError:
                    pass  # closed before taking it all: as it should
                assert json.loads(reader.readline())["code"] == "line_too_long"
                # Then the server closes politely (close_notify), well before
                # its 10 s deadline for aborting a connection that will not close.
                tls.settimeout(5)
                assert reader.readline() == b""
                reader.close()
        # A client that does not trust the certificate is refused.
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ssl.create_default_context().wrap_socket(raw, server_hostname="127.0.0.1")
        # Plain text to the TLS port gets no answer in clear.
        with LineClient(server.port, timeout=5) as plain:
            plain.send_raw(b'{"operation":"health"}\n')
            try:
                data = plain.sock.recv(1024)
            except (ConnectionResetError, TimeoutError):
                data = b""
            assert b"health" not in data
    finally:
        server.stop()


# -- the log -------------------------------------------------------------------------------------


def test_log_keeps_no_secrets_and_no_event_bodies(tmp_path: Path) -> None:
    body_marker = "BODY-MARKER-7f3a"
    auth = {
        "plain": PLAIN,
        "hashed": {"client_id": "hashed-id", "client_secret": secrets.hash_secret(HASHED_SECRET)},
    }
    server = ServerProcess(tmp_path / "srv", auth=auth).start()
    try:
        with LineClient(server.port) as c:
            c.call("create_stream", {"stream_name": "logged"}, auth=PLAIN)
            c.call("write_event", {"stream_name": "logged", "event": {"m": body_marker}}, auth=HASHED)
            c.call("write_events", {"stream_name": "logged", "events": [body_marker] * 3}, auth=PLAIN)
            c.call("get_stream_events", {"stream_name": "logged"}, auth=PLAIN)
            for _ in range(6):
                bad = {"client_id": "plain-id", "client_secret": "WRONG-SECRET-Q1"}
                assert c.request("list_streams", {}, auth=bad)["code"] == "unauthorized"
            c.send_raw(
                b'{"operation":"write_event","auth":'
                + json.dumps(PLAIN).encode()
                + b","
                + body_marker.encode()
                + b"\n"
            )
            assert c.read()["code"] == "invalid_json"
            c.send_raw(body_marker.encode() * 100_000 + b"\n")
            assert c.read()["code"] == "line_too_long"
    finally:
        server.stop()
    log = server.log_text()
    assert "auth failure from 127.0.0.1" in log  # something was logged...
    for secret in (PLAIN["client_secret"], HASHED_SECRET, "WRONG-SECRET-Q1", body_marker):
        assert secret not in log, secret  # ...but never these
