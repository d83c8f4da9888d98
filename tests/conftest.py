"""Shared fixtures: a real server over real TCP on a real database file."""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import pytest

from tests.busclient import LineClient
from tests.servers import ServerProcess

_names = itertools.count()


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the whole session; tests keep apart by stream name."""
    proc = ServerProcess(tmp_path_factory.mktemp("server")).start()
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
