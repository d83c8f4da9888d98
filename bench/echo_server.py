"""The ceiling: a bare Twisted + orjson line server that does no work.

Each request line is decoded and answered with its operation and body,
encoded again: the framing, parsing and encoding cost of the stack with
nothing behind it. Run as a script; it prints its port when listening.

    python bench/echo_server.py [PORT]
"""

from __future__ import annotations

import sys

import orjson
from twisted.internet import reactor
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver


class Echo(LineReceiver):
    """One connection: a JSON object per line in, one per line out."""

    delimiter = b"\n"
    MAX_LENGTH = 1024 * 1024

    def lineReceived(self, line: bytes) -> None:
        request = orjson.loads(line)
        response = {"operation": request.get("operation"), "status": True, "body": request.get("body")}
        self.transport.write(orjson.dumps(response) + b"\n")


def main() -> None:
    port = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    factory = Factory.forProtocol(Echo)
    listening = reactor.listenTCP(port, factory, backlog=2048, interface="127.0.0.1")
    print(f"echo listening on {listening.getHost().port}", flush=True)
    reactor.run()


if __name__ == "__main__":
    main()
