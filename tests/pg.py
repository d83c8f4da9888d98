"""PostgreSQL for tests: throwaway databases on the server the tests may use.

``EVENTBUS_TEST_PG`` names it as a libpq URL of a database to connect to for
``CREATE DATABASE`` (default: the local ``test`` database, trust auth). Each
test session, and each storage test, gets a database of its own with a random
name, dropped afterwards, so runs never see each other's data.
"""

from __future__ import annotations

import os
import secrets
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import psycopg
import pytest
from sqlalchemy.engine import make_url

ADMIN_URL = os.environ.get("EVENTBUS_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


class PgAdmin:
    """Creates and drops databases on the test PostgreSQL."""

    def __init__(self, admin_url: str = ADMIN_URL) -> None:
        self.admin_url = admin_url

    def check(self) -> None:
        """Raise psycopg.Error when the server cannot be used."""
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute("SELECT 1")

    def sqlalchemy_url(self, dbname: str) -> str:
        url = make_url(self.admin_url).set(drivername="postgresql+psycopg", database=dbname)
        return url.render_as_string(hide_password=False)

    def create(self, prefix: str = "eventbus_test", options: str = "") -> str:
        """A new empty database (``options``: more of CREATE DATABASE); its SQLAlchemy URL."""
        name = f"{prefix}_{secrets.token_hex(6)}"
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}" {options}')
        return self.sqlalchemy_url(name)

    def drop(self, url: str) -> None:
        name = make_url(url).database
        with psycopg.connect(self.admin_url, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    @contextmanager
    def database(self, prefix: str = "eventbus_test", options: str = "") -> Iterator[str]:
        url = self.create(prefix, options)
        try:
            yield url
        finally:
            self.drop(url)


def admin_or_skip() -> PgAdmin:
    """The PgAdmin, or skip the test (fail it under CI) if PostgreSQL is not there."""
    admin = PgAdmin()
    try:
        admin.check()
        return admin
    except psycopg.Error as e:
        where = make_url(ADMIN_URL).render_as_string(hide_password=True)
        reason = (
            f"PostgreSQL not reachable at {where} ({' '.join(str(e).split())}); "
            "set EVENTBUS_TEST_PG to a libpq URL where tests may CREATE DATABASE"
        )
    if in_ci():
        pytest.fail(f"CI=true needs PostgreSQL: {reason}", pytrace=False)
    pytest.skip(reason)


def terminate_connections(url: str, application_name: str | None = None) -> int:
    """pg_terminate_backend on every connection to ``url``'s database (but
    ours), or those of one application_name: a dropped connection, for real."""
    name = make_url(url).database
    query = (
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE datname = %s AND pid <> pg_backend_pid()"
    )
    params: list[str] = [name]
    if application_name is not None:
        query += " AND application_name = %s"
        params.append(application_name)
    with psycopg.connect(ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
        row = conn.execute(query, params).fetchone()
    return int(row[0]) if row else 0


#: A COMMIT as libpq sends it: a simple Query message.
_COMMIT = b"Q\x00\x00\x00\x0bCOMMIT\x00"


class TcpProxy:
    """A TCP forwarder to PostgreSQL that a test can cut and restore: an
    outage (every connection reset, new ones refused) without touching the
    shared server; or one connection broken just after it sent a COMMIT."""

    def __init__(self, upstream_host: str, upstream_port: int) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._cut_commit = threading.Event()
        #: Connections cut by cut_after_next_commit.
        self.commits_cut = 0
        self.up()

    def cut_after_next_commit(self) -> None:
        """The next COMMIT any connection sends reaches PostgreSQL, but its
        answer never comes back: the connection is reset a moment later (a
        network failure mid-commit, which the client cannot tell from one
        before it)."""
        self._cut_commit.set()

    def url_for(self, url: str) -> str:
        """``url`` (SQLAlchemy) going through this proxy."""
        return make_url(url).set(host="127.0.0.1", port=self.port).render_as_string(hide_password=False)

    def up(self) -> None:
        listener = socket.create_server(("127.0.0.1", self.port))
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def down(self) -> None:
        """Refuse new connections and reset every open one."""
        listener, self._listener = self._listener, None
        if listener is not None:
            try:
                listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); stops listening
            except OSError:
                pass
            listener.close()
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for s in doomed:
            try:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                # shutdown, not only close: a pump thread blocked in recv()
                # keeps a closed socket alive, but not a shut-down one.
                s.shutdown(socket.SHUT_RDWR)
                s.close()
            except OSError:
                pass

    def close(self) -> None:
        self.down()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self.upstream, timeout=5)
                server.settimeout(None)
            except OSError:
                client.close()
                continue
            with self._lock:
                self._sockets |= {client, server}
            muted = threading.Event()  # the server's answers are dropped
            threading.Thread(target=self._pump, args=(client, server, muted, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, muted, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, muted: threading.Event, upstream: bool) -> None:
        try:
            while data := src.recv(65536):
                if not upstream and muted.is_set():
                    continue
                if upstream and self._cut_commit.is_set() and _COMMIT in data:
                    self._cut_commit.clear()
                    muted.set()
                    dst.sendall(data)
                    time.sleep(0.5)  # PostgreSQL commits; its answer is dropped
                    self.commits_cut += 1
                    for s in (src, dst):
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                        s.shutdown(socket.SHUT_RDWR)
                    return
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
