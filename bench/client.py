"""Small blocking clients for setting up runs (not for measuring load)."""

from __future__ import annotations

import socket
from typing import Any, Self

import orjson


class _Connection:
    """A TCP connection to 127.0.0.1 with a buffered reader."""

    def __init__(self, port: int, timeout: float = 60.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.file = self.sock.makefile("rb", buffering=1 << 20)

    def close(self) -> None:
        self.file.close()
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class LineClient(_Connection):
    """One Event Bus (or echo) connection: lines out, lines in."""

    def read(self) -> dict[str, Any]:
        line = self.file.readline()
        if not line:
            raise ConnectionError("the server closed the connection")
        return orjson.loads(line)

    def call(self, request: bytes) -> dict[str, Any]:
        """Send one request line; the response must be a success."""
        self.sock.sendall(request)
        response = self.read()
        if response.get("status") is not True:
            raise RuntimeError(f"request failed: {response}")
        return response

    def pipeline(self, requests: list[bytes], window: int = 8) -> int:
        """Send requests with up to ``window`` in flight; all must succeed."""
        sent = done = 0
        while done < len(requests):
            while sent < len(requests) and sent - done < window:
                self.sock.sendall(requests[sent])
                sent += 1
            response = self.read()
            if response.get("status") is not True:
                raise RuntimeError(f"request failed: {response}")
            done += 1
        return done


class RespError(Exception):
    """An error reply from Redis."""


class RespClient(_Connection):
    """One Redis connection: commands out, parsed replies in."""

    def read(self) -> Any:
        """One reply: bytes, int, None, or a list of replies."""
        line = self.file.readline()
        if not line:
            raise ConnectionError("redis closed the connection")
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest
        if kind == b"-":
            raise RespError(rest.decode(errors="replace"))
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = self.file.read(n + 2)
            return data[:-2]
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self.read() for _ in range(n)]
        raise RespError(f"unexpected reply {line!r}")

    def command(self, encoded: bytes) -> Any:
        self.sock.sendall(encoded)
        return self.read()

    def pipeline(self, commands: list[bytes], window: int = 1000) -> list[Any]:
        """Send commands with up to ``window`` in flight; return the replies."""
        replies: list[Any] = []
        for start in range(0, len(commands), window):
            chunk = commands[start : start + window]
            self.sock.sendall(b"".join(chunk))
            replies.extend(self.read() for _ in chunk)
        return replies
