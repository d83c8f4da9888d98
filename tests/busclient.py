"""A plain blocking socket client for tests: bytes on a real TCP connection."""

from __future__ import annotations

import json
import socket
from typing import Any

DEFAULT_AUTH = {"client_id": "dope_go_client_id", "client_secret": "dope_go_client_secret"}


class LineClient:
    """One connection; send lines, read response lines."""

    def __init__(
        self, port: int, host: str = "127.0.0.1", timeout: float = 10.0, source: str | None = None
    ) -> None:
        # ``source``: connect from this local address (any of 127.0.0.0/8 on
        # loopback), so the server sees a different peer.
        self.sock = socket.create_connection(
            (host, port), timeout=timeout, source_address=(source, 0) if source else None
        )
        self.buffer = b""

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> LineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, request: dict[str, Any]) -> None:
        self.send_raw(json.dumps(request).encode() + b"\n")

    def read_line(self) -> bytes:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(1 << 20)
            if not chunk:
                raise ConnectionError(f"connection closed; unread: {self.buffer[:200]!r}")
            self.buffer += chunk
        line, _, self.buffer = self.buffer.partition(b"\n")
        return line

    def read(self) -> dict[str, Any]:
        return json.loads(self.read_line())

    def request(self, operation: str, body: Any = None, auth: Any = DEFAULT_AUTH, **extra: Any) -> dict:
        req: dict[str, Any] = {"operation": operation}
        if auth is not None:
            req["auth"] = auth
        if body is not None:
            req["body"] = body
        req.update(extra)
        self.send(req)
        return self.read()

    def call(self, operation: str, body: Any = None, **kw: Any) -> Any:
        """A request that must succeed; returns the response body."""
        response = self.request(operation, body, **kw)
        assert response["status"] is True, response
        return response.get("body")

    def is_closed(self, timeout: float = 5.0) -> bool:
        """True once the server has closed the connection (EOF)."""
        self.sock.settimeout(timeout)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buffer += chunk
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
