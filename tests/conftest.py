"""Shared fixtures: real servers over real TCP, on SQLite and on PostgreSQL.

The ``server`` fixture (and ``client``, built on it) is parametrised by
backend: every test that uses it runs once against a server on a SQLite file
and once against a server on a fresh PostgreSQL database made for this test
session. ``database_url`` does the same for storage tests, with a fresh
database per test. Without a reachable PostgreSQL the ``postgresql`` cases
skip, saying why; under CI (``CI=true``) they fail instead. ``-m "not
postgresql"`` leaves them out.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.busclient import LineClient
from tests.pg import PgAdmin, admin_or_skip
from tests.servers import ServerProcess

_names = itertools.count()

BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgresql)]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "postgresql: the case that runs on PostgreSQL")


@pytest.fixture(scope="session")
def pg_admin() -> PgAdmin:
    """The test PostgreSQL (skips, or fails under CI, when it is not there)."""
    return admin_or_skip()


@pytest.fixture(scope="session")
def pg_session_url(pg_admin: PgAdmin) -> Iterator[str]:
    """A PostgreSQL database for this test session's servers, dropped at the end."""
    with pg_admin.database() as url:
        yield url


@pytest.fixture(scope="session", params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="session")
def server(
    backend: str, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """One server per backend for the whole session; tests keep apart by stream name."""
    database = request.getfixturevalue("pg_session_url") if backend == "postgresql" else None
    proc = ServerProcess(tmp_path_factory.mktemp(f"server-{backend}"), database=database).start()
    yield proc
    proc.stop()


@pytest.fixture
def client(server: ServerProcess) -> Iterator[LineClient]:
    with LineClient(server.port) as c:
        yield c


@pytest.fixture
def stream_name(request: pytest.FixtureRequest) -> str:
    """A stream name no other test uses."""
    return f"{request.node.name[:200]}-{next(_names)}"


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database of each backend: a SQLite file, or a fresh
    PostgreSQL database dropped after the test."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'bus.db'}"
        return
    admin: PgAdmin = request.getfixturevalue("pg_admin")
    with admin.database() as url:
        yield url
