"""The table of operations: body fields, validation, the service call, and
the response of each; decoding requests and encoding responses.

Checks run in PROTOCOL.md's order: JSON, operation, auth, the client's right
to the operation, body, its right to the stream, then the operation itself.
A request becomes a :class:`Request` that the protocol runs when its turn
comes; every failure becomes an error response here, so
the protocol always gets one response line per request.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Any

import orjson
from twisted.internet.defer import CancelledError, Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from eventbus import errors
from eventbus.auth import AuthMemo, Client
from eventbus.clock import now_us
from eventbus.errors import BusError
from eventbus.interfaces import IAuthenticator, IDispatcher, IEvents, IStreams
from eventbus.records import DEAD, RETRY, UNPROCESSED, WriteAnswer
from eventbus.responses import (
    UNANSWERED,
    error_line,
    ok_line,
    page_json,
    stream_json,
    write_event_answer,
    write_events_answer,
)

READ, WRITE = "read", "write"
MAX_BATCH = 1000
MAX_MARK_BATCH = 10_000
MAX_LEASE_SECONDS = 43_200
MAX_WAIT_SECONDS = 30
MAX_KEY_LENGTH = 255
MAX_SEQ = 2**63 - 1

log = Logger(namespace="eventbus.operations")


# -- field parsers: value in, Python value out, or invalid_field -------------


_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")


def _stream_name(value: Any) -> str:
    if not isinstance(value, str):
        raise errors.invalid_field("stream_name must be a string")
    if not 1 <= len(value) <= 255 or _CONTROL.search(value):
        raise errors.invalid_field("stream_name must be 1 to 255 characters with no control characters")
    return value


def _json_value(value: Any) -> str:
    # Decoded from a JSON line, so it re-encodes; compact, keys in the order written.
    try:
        return orjson.dumps(value).decode("utf-8")
    except orjson.JSONEncodeError:
        # orjson decodes 1,024 levels of nesting but encodes only 254.
        raise errors.invalid_field("an event may be nested at most 254 levels deep") from None


def _event_values(value: Any) -> list[str]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_BATCH:
        raise errors.invalid_field(f"events must be a list of 1 to {MAX_BATCH} JSON values")
    if any(v is None for v in value):
        raise errors.invalid_field("events must not contain null")
    return [_json_value(v) for v in value]


def _event_id(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise errors.invalid_field("event_id must be a non-empty string")
    return value


def _event_ids(value: Any) -> list[str]:
    if (
        not isinstance(value, list)
        or not 1 <= len(value) <= MAX_MARK_BATCH
        or not all(isinstance(v, str) and v for v in value)
    ):
        raise errors.invalid_field(f"event_ids must be a list of 1 to {MAX_MARK_BATCH} non-empty strings")
    return value


def _status(value: Any) -> int:
    if type(value) is not int:
        raise errors.invalid_field("status must be an integer")
    if value not in (UNPROCESSED, 1, RETRY, DEAD):
        raise errors.invalid_status()
    return value


def _int_range(name: str, low: int, high: int | None) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if type(value) is not int or value < low or (high is not None and value > high):
            top = f" to {high}" if high is not None else " or more"
            raise errors.invalid_field(f"{name} must be an integer from {low}{top}")
        return value

    return parse


def _wait_seconds(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_WAIT_SECONDS:
        raise errors.invalid_field(f"wait_seconds must be a number from 0 to {MAX_WAIT_SECONDS}")
    return float(value)


def _string(name: str, max_length: int) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        # NUL: PostgreSQL text cannot hold it, so no backend accepts it.
        if not isinstance(value, str) or not 1 <= len(value) <= max_length or "\x00" in value:
            raise errors.invalid_field(
                f"{name} must be a string of 1 to {max_length} characters, without NUL"
            )
        return value

    return parse


@dataclass(frozen=True)
class Field:
    name: str
    parse: Callable[[Any], Any]
    required: bool = True
    #: The type shown in a missing_fields context (the original's names).
    wire_type: str = ""


@dataclass(frozen=True)
class Operation:
    name: str
    handler: Callable[[Context, dict[str, Any]], Any]
    fields: tuple[Field, ...] = ()
    auth: bool = True
    #: The lane orders effects on one connection (see protocol.py); None:
    #: answered at once, touches no storage.
    lane: str | None = READ
    closes: bool = False
    #: The handler answers through ``ctx.answer`` and returns None (the
    #: write path: no Deferred per request).
    answers: bool = False

    @cached_property
    def required(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields if f.required)

    def context(self) -> list[dict[str, Any]]:
        return [{"name": f.name, "type": f.wire_type, "required": True} for f in self.fields if f.required]

    def lane_for(self, args: dict[str, Any]) -> str | None:
        # Leasing reads change the events they hand out.
        if args.get("lease_seconds") is not None:
            return WRITE
        return self.lane


@dataclass(slots=True)
class Context:
    """What a handler needs: the services, the caller, and the time."""

    streams: IStreams
    events: IEvents
    client: Client | None
    now: int
    max_page: int
    reactor: Any
    #: For handlers of operations that answer (Operation.answers): takes the response line.
    answer: Callable[[bytes], None] | None = None


# -- handlers --------------------------------------------------------------------


def _health(ctx: Context, args: dict[str, Any]) -> None:
    return None


def _create_stream(ctx: Context, args: dict[str, Any]) -> Deferred:
    d = ctx.streams.create(
        args["stream_name"], ctx.now, args.get("max_deliveries"), args.get("retention_seconds")
    )
    return d.addCallback(lambda s: {"stream": stream_json(s)})


def _delete_stream(ctx: Context, args: dict[str, Any]) -> Deferred:
    return ctx.streams.delete(args["stream_name"]).addCallback(lambda _: None)


def _get_stream_info(ctx: Context, args: dict[str, Any]) -> Deferred:
    d = ctx.streams.stats(args["stream_name"], ctx.now)
    return d.addCallback(lambda r: {"stream": stream_json(r[0]), "stats": r[1]._asdict()})


def _list_streams(ctx: Context, args: dict[str, Any]) -> Deferred:
    client = ctx.client
    return ctx.streams.list().addCallback(
        lambda streams: {
            "streams": [stream_json(s) for s in streams if client is None or client.may_see(s.name)]
        }
    )


def _page_limit(ctx: Context, args: dict[str, Any]) -> int:
    limit = args.get("limit")
    return ctx.max_page if limit is None else min(limit, ctx.max_page)


def _get_stream_events(ctx: Context, args: dict[str, Any]) -> Deferred:
    d = ctx.events.read(args["stream_name"], None, args.get("after_seq"), _page_limit(ctx, args))
    return d.addCallback(page_json)


def _write_event(ctx: Context, args: dict[str, Any]) -> None:
    reply = _answer_written(ctx, "write_event")
    name, key = args["stream_name"], args.get("key")
    ctx.events.write_then(name, [args["event"]], ctx.now, key, reply, write_event_answer)


def _write_events(ctx: Context, args: dict[str, Any]) -> None:
    reply = _answer_written(ctx, "write_events")
    ctx.events.write_then(args["stream_name"], args["events"], ctx.now, None, reply, write_events_answer)


def _answer_written(ctx: Context, operation: str) -> Callable[[Any], None]:
    """The writer's reply for a write: the answer line it made, or the error."""
    answer = ctx.answer
    assert answer is not None

    def reply(outcome: Any) -> None:
        if isinstance(outcome, WriteAnswer):
            answer(outcome.line)
        elif isinstance(outcome, BusError):
            answer(error_line(operation, outcome))
        else:
            answer(_failed(outcome, operation))

    return reply


def _consume(status: int) -> Callable[[Context, dict[str, Any]], Deferred]:
    def handler(ctx: Context, args: dict[str, Any]) -> Deferred:
        wait = args.get("wait_seconds") or 0
        if not wait:
            return _fetch(ctx, args, status, ctx.now)
        return ensureDeferred(_long_poll(ctx, args, status, wait))

    return handler


def _fetch(ctx: Context, args: dict[str, Any], status: int, now: int) -> Deferred:
    name = args["stream_name"]
    limit = _page_limit(ctx, args)
    lease = args.get("lease_seconds")
    if lease is None:
        d = ctx.events.read(name, status, args.get("after_seq"), limit)
    else:
        d = ctx.events.lease(name, status, args.get("after_seq"), limit, lease, now)
    return d.addCallback(page_json, lease is not None)


async def _long_poll(ctx: Context, args: dict[str, Any], status: int, wait: float) -> dict[str, Any]:
    name = args["stream_name"]
    deadline = ctx.reactor.seconds() + wait
    now = ctx.now
    while True:
        version = ctx.events.version(name)
        result = await _fetch(ctx, args, status, now)
        remaining = deadline - ctx.reactor.seconds()
        if result["events"] or remaining <= 0:
            return result
        if not await ctx.events.wait(name, version, remaining):
            return result
        now = now_us(ctx.reactor)


def _visible(ctx: Context) -> Callable[[str], bool] | None:
    """Marks name events, not streams: a client limited to some streams may
    mark only their events (PROTOCOL.md 7.8); the others are not found."""
    client = ctx.client
    return None if client is None or not client.limited_streams else client.may_see


def _mark_event(ctx: Context, args: dict[str, Any]) -> Deferred:
    d = ctx.events.mark_one(args["event_id"], args["status"], args.get("lease_id"), ctx.now, _visible(ctx))
    return d.addCallback(lambda _: None)


def _mark_events(ctx: Context, args: dict[str, Any]) -> Deferred:
    d = ctx.events.mark(args["event_ids"], args["status"], args.get("lease_id"), ctx.now, _visible(ctx))
    return d.addCallback(lambda m: {"marked": m.marked, "not_found": m.not_found, "lease_lost": m.lease_lost})


def _exit(ctx: Context, args: dict[str, Any]) -> None:
    return None


# -- the table -----------------------------------------------------------------

_STREAM = Field("stream_name", _stream_name, wire_type="string")
_PAGING = (
    Field("limit", _int_range("limit", 1, 10_000), required=False),
    # Bounded by the storage's integer range: beyond it is the client's error.
    Field("after_seq", _int_range("after_seq", 0, MAX_SEQ), required=False),
)
_CONSUMING = (
    _STREAM,
    *_PAGING,
    Field("lease_seconds", _int_range("lease_seconds", 1, MAX_LEASE_SECONDS), required=False),
    Field("wait_seconds", _wait_seconds, required=False),
)
_LEASE_ID = Field("lease_id", _string("lease_id", 64), required=False)

OPERATIONS: tuple[Operation, ...] = (
    # The original ten, in the original's order (it is the order of the
    # unknown_operation reason).
    Operation("health", _health, auth=False, lane=None),
    Operation(
        "create_stream",
        _create_stream,
        (
            _STREAM,
            Field("max_deliveries", _int_range("max_deliveries", 1, 1_000_000), required=False),
            Field("retention_seconds", _int_range("retention_seconds", 1, 100 * 365 * 86400), required=False),
        ),
        lane=WRITE,
    ),
    Operation("delete_stream", _delete_stream, (_STREAM,), lane=WRITE),
    Operation("get_stream_info", _get_stream_info, (_STREAM,)),
    Operation("get_stream_events", _get_stream_events, (_STREAM, *_PAGING)),
    Operation(
        "write_event",
        _write_event,
        (
            _STREAM,
            Field("event", _json_value, wire_type="[]byte"),
            Field("key", _string("key", MAX_KEY_LENGTH), required=False),
        ),
        lane=WRITE,
        answers=True,
    ),
    Operation("process_events", _consume(UNPROCESSED), _CONSUMING),
    Operation("retry_events", _consume(RETRY), _CONSUMING),
    Operation(
        "mark_event",
        _mark_event,
        (
            Field("event_id", _event_id, wire_type="string"),
            Field("status", _status, wire_type="uint8"),
            _LEASE_ID,
        ),
        lane=WRITE,
    ),
    Operation("exit", _exit, auth=False, lane=None, closes=True),
    # Extensions (PROTOCOL.md section 7).
    Operation(
        "write_events",
        _write_events,
        (_STREAM, Field("events", _event_values, wire_type="[]json")),
        lane=WRITE,
        answers=True,
    ),
    Operation(
        "mark_events",
        _mark_events,
        (
            Field("event_ids", _event_ids, wire_type="[]string"),
            Field("status", _status, wire_type="uint8"),
            _LEASE_ID,
        ),
        lane=WRITE,
    ),
    Operation("list_streams", _list_streams),
)

BY_NAME = {op.name: op for op in OPERATIONS}


class Request:
    """A validated request, ready to run when the protocol says so:
    ``run(answer)`` calls ``call(*args)``, or ``call(*args, answer)`` for a
    request that ``answers``: it returns None and passes its response line to
    ``answer`` later (or at once). One is made per line, so it is lean."""

    __slots__ = ("operation", "lane", "closes", "call", "args", "code", "answers")

    def __init__(
        self,
        operation: str,
        lane: object,
        closes: bool,
        call: Callable[..., bytes | Deferred],
        args: tuple = (),
        code: str | None = None,
        answers: bool = False,
    ) -> None:
        self.operation = operation
        #: READ or WRITE; None: answered at once; or a lane of its own (see
        #: Dispatcher._after_verification).
        self.lane = lane
        self.closes = closes
        self.call = call
        self.args = args
        #: The error code when the request was refused before running (the
        #: protocol slows down repeated ``unauthorized`` answers).
        self.code = code
        self.answers = answers

    def run(self, answer: Callable[[bytes], None] | None = None) -> bytes | Deferred | None:
        if self.answers:
            return self.call(*self.args, answer)
        return self.call(*self.args)


def _same(line: bytes) -> bytes:
    return line


def answered(operation: str, line: bytes, closes: bool = False, code: str | None = None) -> Request:
    """A request answered already, with ``line``: refused, or failed before it could run."""
    return Request(operation, None, closes, _same, (line,), code)


# orjson reads an integer beyond 64 bits as a float, silently changing it;
# such a request is refused instead (``invalid_json``). The cheap test runs on
# every line: every digit becomes "0", everything else ".", and 19 zeros in a
# row mean 19 digits in a row (C speed: a regular expression cost five times
# as much per line); the exact test runs only then.
_DIGITS_AS_ZEROS = bytes(0x30 if 0x30 <= b <= 0x39 else 0x2E for b in range(256))
_NINETEEN_DIGITS = b"0" * 19


def _exact_int(text: str) -> int:
    value = int(text)
    if not -(2**63) <= value < 2**64:
        raise ValueError("integer beyond 64 bits")
    return value


def _has_huge_integer(line: bytes) -> bool:
    try:
        json.loads(line, parse_int=_exact_int)
    except (ValueError, RecursionError):  # orjson nests deeper than the stdlib parser
        return True
    return False


@implementer(IDispatcher)
class Dispatcher:
    """Turns request lines into :class:`Request` objects."""

    def __init__(
        self,
        streams: IStreams,
        events: IEvents,
        authenticator: IAuthenticator,
        reactor: Any,
        max_page: int = 10_000,
    ) -> None:
        self.streams = streams
        self.events = events
        self.authenticator = authenticator
        self.reactor = reactor
        self.max_page = max_page
        self._unknown = errors.unknown_operation([op.name for op in OPERATIONS])

    def prepare(self, line: bytes, memo: AuthMemo | None = None) -> Request:
        try:
            request = orjson.loads(line)
        except orjson.JSONDecodeError:
            request = None
        if (
            request is not None
            and _NINETEEN_DIGITS in line.translate(_DIGITS_AS_ZEROS)
            and _has_huge_integer(line)
        ):
            request = None
        if not isinstance(request, dict):
            return answered("decode_request", error_line("decode_request", errors.invalid_json()))
        op_name = request.get("operation")
        # Any JSON value may arrive here; only a string can name an operation.
        op = BY_NAME.get(op_name) if isinstance(op_name, str) else None
        if op is None:
            return answered("decode_request", error_line("decode_request", self._unknown))
        try:
            client = self.authenticator.authenticate(request.get("auth"), memo) if op.auth else None
        except BusError as e:
            return answered(op.name, error_line(op.name, e), code=e.code)
        if isinstance(client, Deferred):
            return self._after_verification(op, request, client)
        return self._checked(op, request, client)

    def _checked(self, op: Operation, request: dict[str, Any], client: Client | None) -> Request:
        """The checks after auth, in their order; then the request to run."""
        try:
            if client is not None and not client.may(op.name):
                raise errors.forbidden(op.name)
            args = self._parse_body(op, request.get("body"))
            name = args.get("stream_name")
            if client is not None and name is not None and not client.may_see(name):
                raise errors.forbidden(op.name, name)
        except BusError as e:
            return answered(op.name, error_line(op.name, e), code=e.code)
        # The time is read when the request runs, not when it arrived: it
        # may wait behind a long poll, and a lease must start when it is granted.
        return Request(
            op.name, op.lane_for(args), op.closes, self._run, (op, client, args), answers=op.answers
        )

    def _after_verification(self, op: Operation, request: dict[str, Any], verifying: Deferred) -> Request:
        """A request whose secret is being verified off the reactor thread:
        the remaining checks run once it is, so their order holds."""
        # A lane of its own (equal to no other): it runs alone, after what
        # came before it on the connection and before what comes after, so
        # the order of effects holds however long the verification takes.
        held = Request(op.name, object(), op.closes, _same, (b"",))

        def verified(client: Client) -> bytes | Deferred:
            checked = self._checked(op, request, client)
            held.code = checked.code
            if not checked.answers:
                return checked.run()
            answered: Deferred = Deferred()
            result = checked.run(answered.callback)
            return answered if result is None else result

        def refused(failure: Failure) -> bytes:
            if failure.check(CancelledError):
                return b""  # the client went away while we verified
            failure.trap(BusError)
            held.code = failure.value.code
            return error_line(op.name, failure.value)

        held.call = verifying.addCallbacks
        held.args = (verified, refused)
        return held

    def _parse_body(self, op: Operation, body: Any) -> dict[str, Any]:
        fields = op.fields
        if not fields:
            return {}
        if not isinstance(body, dict):
            raise errors.missing_fields(op.context())
        for name in op.required:
            if body.get(name) is None:
                raise errors.missing_fields(op.context())
        args = {}
        for f in fields:
            value = body.get(f.name)
            if value is not None:
                args[f.name] = f.parse(value)
        return args

    def _run(
        self,
        op: Operation,
        client: Client | None,
        args: dict[str, Any],
        answer: Callable[[bytes], None] | None = None,
    ) -> bytes | Deferred | None:
        ctx = Context(
            self.streams, self.events, client, now_us(self.reactor), self.max_page, self.reactor, answer
        )
        try:
            result = op.handler(ctx, args)
        except BusError as e:
            return error_line(op.name, e)
        except Exception:
            log.failure("operation {operation} failed", operation=op.name)
            return error_line(op.name, errors.unavailable())
        if op.answers:
            return None  # answered through ctx.answer
        if not isinstance(result, Deferred):
            return ok_line(op.name, result)
        name = (op.name,)
        return result.addCallbacks(_ok, _failed, callbackArgs=name, errbackArgs=name)


def _ok(body: Any, operation: str) -> bytes:
    return ok_line(operation, body)


def _failed(failure: Failure, operation: str) -> bytes:
    if failure.check(BusError):
        return error_line(operation, failure.value)
    if failure.check(errors.OutcomeUnknown):
        return UNANSWERED
    if failure.check(CancelledError):
        return error_line(operation, errors.unavailable("request cancelled"))
    log.failure("operation {operation} failed", failure, operation=operation)
    return error_line(operation, errors.unavailable())
