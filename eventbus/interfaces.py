"""The contracts between the layers (zope.interface).

The protocol knows only :class:`IDispatcher`; operations know only the
services (:class:`IStreams`, :class:`IEvents`) and :class:`IAuthenticator`;
the services know only :class:`IDatabase`. Every method that may touch
storage returns a Deferred.
"""

from zope.interface import Attribute, Interface


class IDatabase(Interface):
    """Blocking transactions run off the reactor thread."""

    dialect = Attribute("The backend's name: 'sqlite' or 'postgresql'.")

    def write(fn, *args):
        """Run ``fn(conn, *args)`` in the writer's next group commit; a
        Deferred that fires with its result after the commit."""

    def read(fn, *args):
        """Run ``fn(conn, *args)`` in a read transaction on a reader thread."""


class IStreams(Interface):
    """Streams: named, unique, each with its own events."""

    def create(name, now, max_deliveries=None, retention_seconds=None):
        """Deferred[Stream]; fails with ``stream_exists``."""

    def delete(name):
        """Deferred[None]: the stream and all its events are gone."""

    def get(name):
        """Deferred[Stream]; fails with ``stream_not_found``."""

    def stats(name, now):
        """Deferred[(Stream, Stats)]: counts of the stream's events by state."""

    def list():
        """Deferred[list[Stream]], by name."""


class IEvents(Interface):
    """Writing, reading, leasing and marking events."""

    def write(stream_name, bodies, now, key=None):
        """Deferred[Written]: ``bodies`` (compact JSON texts) appended in one
        commit, acknowledged only once durable."""

    def read(stream_name, status, after_seq, limit):
        """Deferred[Page]: events in write order, read-only."""

    def lease(stream_name, status, after_seq, limit, lease_seconds, now):
        """Deferred[Page]: events handed to this caller alone until the lease
        ends or they are marked."""

    def wait(stream_name, status, timeout):
        """Deferred that fires (with None) when an event of ``status`` may be
        available in the stream, or when ``timeout`` seconds have passed."""

    def mark(event_ids, status, lease_id, now):
        """Deferred[Marked]."""


class IAuthenticator(Interface):
    """Who a request comes from."""

    def authenticate(auth):
        """The client for an ``auth`` object, or raise ``unauthorized``."""


class IDispatcher(Interface):
    """Turns request lines into response lines (the operations layer)."""

    def dispatch(line, session):
        """Handle one request line. Returns the response line (bytes), or a
        Deferred of it; never raises, never fails."""
