"""Authentication and access control of clients named in the configuration.

A configured secret is plain text (the original's format) or hashed
(``scrypt$N$r$p$salt$hash``, see :mod:`eventbus.secrets`). Every check is
constant-time, and an unknown client id is checked against a dummy secret of
the same kind, so it costs what a wrong secret costs. Verifying scrypt takes
tens of milliseconds, so successful verifications are remembered, keyed by
client id and the SHA-256 of the presented secret: a client pays it once.

A client may be limited to streams (names or glob patterns) and operations
(PROTOCOL.md 7.8). :class:`FailureThrottle` slows down repeated failures from
one address.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import Any

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import implementer

from eventbus import errors, secrets
from eventbus.config import ClientConfig
from eventbus.interfaces import IAuthenticator

#: Most successful verifications remembered (oldest forgotten first).
VERIFIED_CACHE_SIZE = 10_000


class _Plain:
    """A plain configured secret, compared as SHA-256 digests (fixed length)."""

    def __init__(self, secret: bytes) -> None:
        self._digest = hashlib.sha256(secret).digest()

    def matches(self, presented: bytes, presented_digest: bytes) -> bool:
        return hmac.compare_digest(presented_digest, self._digest)


class _Hashed:
    """A scrypt-hashed configured secret."""

    def __init__(self, parsed: secrets.ScryptHash) -> None:
        self.parsed = parsed

    def matches(self, presented: bytes, presented_digest: bytes) -> bool:
        return self.parsed.matches(presented)


def _verifier(secret: str) -> _Plain | _Hashed:
    if secrets.is_hashed(secret):
        return _Hashed(secrets.parse(secret))
    return _Plain(secret.encode("utf-8"))


class AuthMemo:
    """One connection's last verified ``auth`` object and its client.

    A client sends the same auth object on every line of a connection; once
    it has been verified there, an equal one is the same client without
    hashing it again. Comparing with ``==`` is not constant-time, and need
    not be: the memo holds only what this connection itself presented and
    had verified, so timing tells a peer nothing it did not send.
    """

    __slots__ = ("auth", "client")

    def __init__(self) -> None:
        self.auth: dict[str, Any] | None = None
        self.client: Client | None = None


class Client:
    """A known client and what it may do."""

    def __init__(self, config: ClientConfig) -> None:
        self.name = config.name
        self.client_id = config.client_id
        self.verifier = _verifier(config.client_secret)
        self._streams = config.streams
        self._operations = None if config.operations is None else frozenset(config.operations)

    def may(self, operation: str) -> bool:
        """May this client use ``operation`` at all?"""
        return self._operations is None or operation in self._operations

    @property
    def limited_streams(self) -> bool:
        """True when this client may see only some streams."""
        return self._streams is not None

    def may_see(self, stream: str) -> bool:
        """Is ``stream`` one of this client's streams (a name or a glob match)?"""
        if self._streams is None:
            return True
        return any(stream == pattern or fnmatchcase(stream, pattern) for pattern in self._streams)

    def __repr__(self) -> str:
        # Never the secret.
        return f"<Client {self.name!r} id={self.client_id!r}>"


def _dummy_for(clients: list[Client]) -> _Plain | _Hashed:
    """What an unknown client id is checked against: the same kind, and the
    same scrypt cost, as most configured clients' secrets."""
    hashed = [c.verifier.parsed for c in clients if isinstance(c.verifier, _Hashed)]
    if len(hashed) * 2 < len(clients) or not hashed:
        return _Plain(os.urandom(32))
    costs: dict[tuple[int, int, int, int], int] = {}
    for h in hashed:
        cost = (h.n, h.r, h.p, len(h.key))
        costs[cost] = costs.get(cost, 0) + 1
    n, r, p, key_len = max(costs, key=costs.__getitem__)
    return _Hashed(secrets.ScryptHash(n, r, p, os.urandom(secrets.SALT_BYTES), os.urandom(key_len)))


@implementer(IAuthenticator)
class Authenticator:
    log = Logger()

    def __init__(
        self,
        clients: tuple[ClientConfig, ...],
        cache_size: int = VERIFIED_CACHE_SIZE,
        operations: Iterable[str] | None = None,
        in_thread: Callable[..., Deferred] | None = None,
    ) -> None:
        """``operations``: every operation's name, to warn of a client's
        list naming one that does not exist (it would allow nothing).
        ``in_thread(fn, *args)``: where scrypt runs (the server passes a
        thread pool, so tens of milliseconds of hashing never stall the
        reactor); without it, scrypt runs in the caller."""
        self._in_thread = in_thread
        self._verifying: dict[tuple[str, bytes], list[Deferred]] = {}
        self._clients = {c.client_id: Client(c) for c in clients}
        self._dummy = _dummy_for(list(self._clients.values()))
        self._verified: OrderedDict[tuple[str, bytes], None] = OrderedDict()
        self._cache_size = cache_size
        if operations is not None:
            known = set(operations)
            for c in clients:
                unknown = sorted(set(c.operations or ()) - known)
                if unknown:
                    names = ", ".join(unknown)
                    self.log.warn("client {name}: no such operations: {unknown}", name=c.name, unknown=names)

    def authenticate(self, auth: Any, memo: AuthMemo | None = None) -> Client | Deferred:
        """The client named by ``auth``, or raise ``unauthorized``; a
        Deferred of the same when a scrypt hash must be verified in a thread.
        ``memo``: the connection's :class:`AuthMemo`, consulted and kept."""
        if memo is not None and memo.auth is not None and auth == memo.auth:
            return memo.client  # type: ignore[return-value]
        client = self._authenticate(auth)
        if memo is not None and isinstance(client, Client) and len(auth) == 2:
            # Only the usual object (id and secret): junk beside them is not kept.
            memo.auth, memo.client = auth, client
        return client

    def _authenticate(self, auth: Any) -> Client | Deferred:
        if not isinstance(auth, dict):
            raise errors.unauthorized()
        client_id = auth.get("client_id")
        secret = auth.get("client_secret")
        if not isinstance(client_id, str) or not isinstance(secret, str):
            raise errors.unauthorized()
        presented = secret.encode("utf-8", "surrogatepass")
        digest = hashlib.sha256(presented).digest()
        key = (client_id, digest)
        client = self._clients.get(client_id)
        if client is not None and key in self._verified:
            self._verified.move_to_end(key)
            return client
        # The same work whether or not the id is known.
        verifier = client.verifier if client is not None else self._dummy
        if isinstance(verifier, _Hashed) and self._in_thread is not None:
            verifying = self._verify_in_thread(verifier, presented, digest, key)
            return verifying.addCallback(self._admit, client, key)
        return self._admit(verifier.matches(presented, digest), client, key)

    def _verify_in_thread(
        self, verifier: _Hashed, presented: bytes, digest: bytes, key: tuple[str, bytes]
    ) -> Deferred:
        """One scrypt run per secret presented, however many requests
        (pipelined on one connection, or from many) are waiting for it."""
        mine: Deferred = Deferred()
        waiting = self._verifying.get(key)
        if waiting is not None:
            waiting.append(mine)
            return mine
        self._verifying[key] = [mine]

        def done(result: Any) -> None:
            for d in self._verifying.pop(key):
                d.callback(result)

        self._in_thread(verifier.matches, presented, digest).addBoth(done)
        return mine

    def _admit(self, matched: bool, client: Client | None, key: tuple[str, bytes]) -> Client:
        if not matched or client is None:
            raise errors.unauthorized()
        self._verified[key] = None
        if len(self._verified) > self._cache_size:
            self._verified.popitem(last=False)
        return client


class FailureThrottle:
    """Progressive delays for the answers to repeated auth failures per address.

    The first ``free`` failures from an address are answered at once; each
    later one waits twice as long as the one before, from ``base`` seconds up
    to ``cap``. An address that has not failed for ``forget_after`` seconds
    starts again from nothing. Only failures are delayed: a real client at
    the same address that presents its right secret is never slowed down.
    """

    def __init__(
        self,
        clock: Any,
        free: int = 3,
        base: float = 0.1,
        cap: float = 5.0,
        forget_after: float = 60.0,
        max_addresses: int = 10_000,
    ) -> None:
        self._clock = clock
        self.free = free
        self.base = base
        self.cap = cap
        self.forget_after = forget_after
        self.max_addresses = max_addresses
        #: address -> (failures, time of the last one), least recent first.
        self._failures: OrderedDict[str, tuple[int, float]] = OrderedDict()

    def failed(self, address: str) -> float:
        """Count a failure from ``address``; the seconds to delay its answer."""
        now = self._clock.seconds()
        count, last = self._failures.pop(address, (0, now))
        if now - last >= self.forget_after:
            count = 0
        count += 1
        self._failures[address] = (count, now)
        self._prune(now)
        if count <= self.free:
            return 0.0
        return min(self.cap, self.base * 2.0 ** min(count - self.free - 1, 64))

    def failures(self, address: str) -> int:
        """Failures counted for ``address`` (for tests and metrics)."""
        return self._failures.get(address, (0, 0.0))[0]

    def _prune(self, now: float) -> None:
        failures = self._failures
        while failures:
            oldest, (_, last) = next(iter(failures.items()))
            if len(failures) <= self.max_addresses and now - last < self.forget_after:
                break
            del failures[oldest]
