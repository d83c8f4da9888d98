"""Where the server is: ``host:port``, ``tcp://host:port`` or ``tls://host:port``."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_PORT = 8080


@dataclass(frozen=True)
class Address:
    host: str
    port: int
    tls: bool = False

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{'tls' if self.tls else 'tcp'}://{host}:{self.port}"


def parse_address(text: str, tls: bool | None = None) -> Address:
    """Parse an address; ``tls`` (when not None) overrides the scheme.

    ``[::1]:8080`` for IPv6; a missing port means 8080.
    """
    rest = text.strip()
    scheme_tls = False
    if "://" in rest:
        scheme, rest = rest.split("://", 1)
        if scheme not in ("tcp", "tls", "ssl"):
            raise ValueError(f"address scheme must be tcp:// or tls://, got {scheme}://")
        scheme_tls = scheme != "tcp"
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, _, tail = rest[1:].partition("]")
        port_text = tail[1:] if tail.startswith(":") else ""
    elif rest.count(":") == 1:
        host, port_text = rest.split(":")
    else:
        host, port_text = rest, ""
    if not host:
        raise ValueError(f"address {text!r} has no host")
    try:
        port = int(port_text) if port_text else DEFAULT_PORT
    except ValueError:
        raise ValueError(f"address {text!r}: port must be a number") from None
    if not 0 < port < 65536:
        raise ValueError(f"address {text!r}: port must be 1 to 65535")
    return Address(host, port, scheme_tls if tls is None else tls)
