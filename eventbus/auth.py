"""Authentication and access control of clients named in the configuration.

Secrets are compared in constant time, and an unknown client id is checked
against a dummy secret so it costs what a wrong secret costs. A client may be
limited to streams (names or glob patterns) and operations (PROTOCOL.md 7.8).
"""

from __future__ import annotations

import hmac
from fnmatch import fnmatchcase
from typing import Any

from zope.interface import implementer

from eventbus import errors
from eventbus.config import ClientConfig
from eventbus.interfaces import IAuthenticator

_DUMMY_SECRET = b"\x00" * 32


class Client:
    """A known client and what it may do."""

    def __init__(self, config: ClientConfig) -> None:
        self.name = config.name
        self.client_id = config.client_id
        self.secret = config.client_secret.encode("utf-8")
        self._streams = config.streams
        self._operations = None if config.operations is None else frozenset(config.operations)

    def may(self, operation: str) -> bool:
        return self._operations is None or operation in self._operations

    def may_see(self, stream: str) -> bool:
        if self._streams is None:
            return True
        return any(fnmatchcase(stream, pattern) for pattern in self._streams)


@implementer(IAuthenticator)
class Authenticator:
    def __init__(self, clients: tuple[ClientConfig, ...]) -> None:
        self._clients = {c.client_id: Client(c) for c in clients}

    def authenticate(self, auth: Any) -> Client:
        if not isinstance(auth, dict):
            raise errors.unauthorized()
        client_id = auth.get("client_id")
        secret = auth.get("client_secret")
        if not isinstance(client_id, str) or not isinstance(secret, str):
            raise errors.unauthorized()
        client = self._clients.get(client_id)
        expected = client.secret if client is not None else _DUMMY_SECRET
        if not hmac.compare_digest(expected, secret.encode("utf-8", "surrogatepass")) or client is None:
            raise errors.unauthorized()
        return client
