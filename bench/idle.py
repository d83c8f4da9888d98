"""Idle connections: many clients that connect and then say nothing."""

from __future__ import annotations

import select
import socket


class IdleConnections:
    """``count`` open connections to a server, held for a ``with`` block."""

    def __init__(self, port: int, count: int) -> None:
        self.port = port
        self.count = count
        self.socks: list[socket.socket] = []

    def __enter__(self) -> IdleConnections:
        for _ in range(self.count):
            self.socks.append(socket.create_connection(("127.0.0.1", self.port), timeout=10))
        return self

    def __exit__(self, *exc: object) -> None:
        for s in self.socks:
            s.close()
        self.socks.clear()

    def count_open(self) -> int:
        """How many the server has not closed (no EOF waiting to be read)."""
        poller = select.poll()
        for s in self.socks:
            poller.register(s, select.POLLIN)
        # An idle connection only becomes readable when the server closes it.
        return len(self.socks) - len(poller.poll(0))
