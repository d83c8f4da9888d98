"""The contracts between the layers (zope.interface).

The protocol knows only :class:`IDispatcher`; operations know only the
services (:class:`IStreams`, :class:`IEvents`) and :class:`IAuthenticator`;
the services know only :class:`IDatabase`. Every method that may touch
storage returns a Deferred. tests/test_interfaces.py checks that each
implementation provides its interface and has no public method beyond it.
"""

from zope.interface import Attribute, Interface


class IDatabase(Interface):
    """Blocking transactions run off the reactor thread."""

    dialect = Attribute("The backend's name: 'sqlite' or 'postgresql'.")

    def write(fn, *args, committed=None):
        """Run ``fn(conn, *args)`` in the writer's next group commit; a
        Deferred that fires with its result after the commit. Before it
        does, ``committed(args, result)`` runs, even if the Deferred was
        cancelled meanwhile: for what must follow every durable change."""

    def write_then(fn, args, reply, committed=None, render=None):
        """As :meth:`write`, for the hot path: no Deferred; ``reply(outcome)``
        gets the result, or the BusError or Failure, on the reactor thread
        (at once if the writer refuses the job). ``render(result)``, a
        module-level function, runs in the writer after the commit, off the
        reactor thread; its value is the outcome, and what ``committed`` gets."""

    def read(fn, *args):
        """Run ``fn(conn, *args)`` in a read transaction on a reader thread."""


class IStreams(Interface):
    """Streams: named, unique, each with its own events."""

    def create(name, now, max_deliveries=None, retention_seconds=None):
        """Deferred[Stream]; fails with ``stream_exists``."""

    def delete(name):
        """Deferred[None]: the stream and all its events are gone."""

    def stats(name, now):
        """Deferred[(Stream, Stats)]: counts of the stream's events by state."""

    def list():
        """Deferred[list[Stream]], by name."""


class IEvents(Interface):
    """Writing, reading, leasing and marking events."""

    def write(stream_name, bodies, now, key=None):
        """Deferred[Written]: ``bodies`` (compact JSON texts) appended in one
        commit, acknowledged only once durable."""

    def write_then(stream_name, bodies, now, key, reply, render):
        """As :meth:`write`, with the outcome passed to ``reply`` instead of
        a Deferred: ``render(written)`` (made in the writer, see
        IDatabase.write_then), or the BusError or Failure."""

    def read(stream_name, status, after_seq, limit):
        """Deferred[Page]: events in write order, read-only."""

    def lease(stream_name, status, after_seq, limit, lease_seconds, now):
        """Deferred[Page]: events handed to this caller alone until the lease
        ends or they are marked."""

    def version(stream_name):
        """The stream's change counter now (an int, no storage access): read
        it before a query, pass it to :meth:`wait` after an empty one."""

    def wait(stream_name, since, timeout):
        """Deferred[bool]: True once the stream changed after version
        ``since`` (at once if it already has), False when ``timeout`` seconds
        pass first or the server is shutting down. Cancellable."""

    def mark_one(event_id, status, lease_id, now, visible=None):
        """Deferred[Marked] for one event; fails with ``event_not_found`` or
        ``lease_lost`` (``mark_event``). ``visible(stream_name)``, when
        given, says which streams' events the caller may mark; the others
        are not found for it."""

    def mark(event_ids, status, lease_id, now, visible=None):
        """Deferred[Marked]: unknown ids and lost leases are reported, not
        errors (``mark_events``); ``visible`` as for :meth:`mark_one`."""

    def stop_waiting():
        """Shutting down: end every long poll now, and every later one at once."""


class IAuthenticator(Interface):
    """Who a request comes from."""

    def authenticate(auth, memo=None):
        """The client for an ``auth`` object, or raise ``unauthorized``;
        ``memo``, one connection's ``AuthMemo``, spares a repeated check."""


class IDispatcher(Interface):
    """Turns request lines into requests the protocol runs (the operations layer)."""

    def prepare(line, memo=None):
        """Decode, authenticate and validate one request line (bytes, no line
        ending) on the reactor thread, touching no storage; ``memo`` is the
        connection's ``AuthMemo`` (see IAuthenticator). Returns a
        :class:`eventbus.operations.Request`: its ``lane`` (None, "read",
        "write", or a lane of its own while a hashed secret is verified) says
        how it orders against the connection's other requests,
        ``closes`` whether the connection ends after its answer, and ``run()``
        starts it and returns the response line (bytes) or a Deferred that
        fires with it and never fails. Rejected requests come back already
        answered (lane None)."""
