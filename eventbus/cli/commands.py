"""``eventbus``: every operation from a shell.

Exit codes (scripts may rely on them):

====  =====================================================================
0     done
1     the server refused (the error's code and reason are printed; with
      ``--json`` as ``{"error": {"code": ..., "reason": ...}}`` on stdout)
2     usage: bad flags or arguments, an unusable profile file
3     no answer: cannot connect, connection lost, TLS failed, or an answer
      that is not this protocol
4     bad input: a ``--from`` file that cannot be read or has a line that is
      not JSON (events before it were written; the message says how many)
130   interrupted (Ctrl-C)
====  =====================================================================
"""

from __future__ import annotations

import argparse
import getpass
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any, TextIO

import orjson

from eventbus.cli.output import (
    EVENT_HEADERS,
    Progress,
    compact,
    event_rows,
    status_name,
    table,
    terminal_width,
    to_json,
    when,
)
from eventbus.cli.settings import Settings, SettingsError, resolve
from eventbus.client import (
    Client,
    ConnectionFailed,
    Event,
    EventBusError,
    Forbidden,
    RequestError,
    Status,
    StreamNotFound,
)

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_CONNECTION, EXIT_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
MAX_BATCH = 1000
MAX_MARK_BATCH = 10_000


class UsageError(Exception):
    pass


class InputError(Exception):
    pass


class Context:
    """What a command needs: its arguments, the output streams, a client."""

    def __init__(self, args: argparse.Namespace, settings: Settings, stdout: TextIO, stderr: TextIO,
                 stdin: TextIO) -> None:
        self.args = args
        self.settings = settings
        self.out = stdout
        self.err = stderr
        self.stdin = stdin
        self.json: bool = bool(getattr(args, "json", False))
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            s = self.settings
            self._client = Client(
                s.address,
                s.client_id,
                s.client_secret,
                tls=s.tls,
                ca_file=s.ca_file,
                verify=not s.insecure,
                timeout=s.timeout,
                retries=2,
            )
        return self._client

    def close(self) -> None:
        if self._client is not None:
            self._client.close()

    def print(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def emit(self, value: Any, human: Callable[[], str]) -> None:
        """JSON with --json, else the human text."""
        if self.json:
            self.print(to_json(value, pretty=self.out.isatty()))
        else:
            text = human()
            if text:
                self.print(text)

    def progress(self, total: float | None, unit: str = "events") -> Progress:
        quiet = getattr(self.args, "quiet", False)
        return Progress(total, unit, self.err, enabled=None if not quiet else False)


# -- argument types --------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def duration(text: str) -> int:
    """Seconds from ``90``, ``90s``, ``15m``, ``12h``, ``7d``, ``2w``."""
    m = _DURATION.match(text.lower())
    if not m:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (examples: 3600, 90s, 15m, 12h, 7d)")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def status_arg(text: str) -> Status:
    try:
        return Status.parse(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def json_value(text: str) -> Any:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise UsageError(f"not valid JSON: {text!r} (a string needs quotes: '\"text\"')") from None
    if value is None:
        raise UsageError("an event cannot be null")
    return value


# -- commands ----------------------------------------------------------------------


def cmd_health(ctx: Context) -> int:
    ctx.client.health()
    ctx.emit({"status": "ok", "address": str(ctx.client.address)}, lambda: f"ok: {ctx.client.address}")
    return EXIT_OK


def cmd_streams(ctx: Context) -> int:
    streams = ctx.client.list_streams()
    stats: dict[str, Any] = {}
    if not ctx.args.no_stats and streams:
        with ctx.client.pipeline() as p:
            for s in streams:
                p.get_stream_info(s.name)
        for s, info in zip(streams, p.results):
            if isinstance(info, (StreamNotFound, Forbidden)):
                continue  # deleted meanwhile, or this client may not read it
            if isinstance(info, EventBusError):
                raise info
            stats[s.name] = info.stats
    if ctx.json:
        ctx.emit({"streams": [{**_dict(s), "stats": stats.get(s.name)} for s in streams]}, str)
        return EXIT_OK
    if not streams:
        ctx.print("no streams")
        return EXIT_OK
    headers = ("NAME", "UNPROCESSED", "RETRY", "LEASED", "PROCESSED", "DEAD", "TOTAL", "CREATED (UTC)")
    rows = []
    for s in streams:
        st = stats.get(s.name)
        counts = (
            [st.unprocessed, st.retry, st.leased, st.processed, st.dead, st.total] if st else ["-"] * 6
        )
        rows.append([s.name, *counts, when(s.created_at)])
    ctx.print(table(headers, rows, terminal_width(ctx.out)))
    return EXIT_OK


def _dict(value: Any) -> Any:
    return orjson.loads(to_json(value))


def cmd_create(ctx: Context) -> int:
    a = ctx.args
    stream = ctx.client.create_stream(
        a.stream, max_deliveries=a.max_deliveries, retention_seconds=a.retention
    )
    ctx.emit({"stream": stream}, lambda: f"created stream {stream.name} ({stream.id})")
    return EXIT_OK


def cmd_delete(ctx: Context) -> int:
    a = ctx.args
    if not a.yes and ctx.stdin.isatty() and ctx.err.isatty():
        ctx.err.write(f"delete stream {a.stream!r} and all its events? [y/N] ")
        ctx.err.flush()
        if ctx.stdin.readline().strip().lower() not in ("y", "yes"):
            ctx.err.write("not deleted\n")
            return EXIT_USAGE
    ctx.client.delete_stream(a.stream)
    ctx.emit({"deleted": a.stream}, lambda: f"deleted stream {a.stream}")
    return EXIT_OK


def cmd_stats(ctx: Context) -> int:
    info = ctx.client.get_stream_info(ctx.args.stream)
    s, st = info.stream, info.stats

    def human() -> str:
        rows = [
            ["name", s.name],
            ["id", s.id],
            ["created", when(s.created_at) + " UTC"],
            ["max deliveries", s.max_deliveries if s.max_deliveries is not None else "-"],
            ["retention", f"{s.retention_seconds}s" if s.retention_seconds is not None else "server default"],
        ]
        if st is not None:
            rows += [["unprocessed", st.unprocessed], ["retry", st.retry], ["leased", st.leased],
                     ["processed", st.processed], ["dead", st.dead], ["total", st.total]]
        return "\n".join(f"{k + ':':<16}{v}" for k, v in rows)

    ctx.emit({"stream": s, "stats": st}, human)
    return EXIT_OK


def _matching(ctx: Context, stream: str, status: Status | None, after_seq: int | None,
              page: int = 1000) -> Iterator[Event]:
    """Events of a stream (of one status), in order, page by page."""
    client = ctx.client
    while True:
        if status == Status.UNPROCESSED:
            result = client.process_events(stream, limit=page, after_seq=after_seq)
        elif status == Status.RETRY:
            result = client.retry_events(stream, limit=page, after_seq=after_seq)
        else:
            result = client.get_stream_events(stream, limit=page, after_seq=after_seq)
        for event in result.events:
            if status is None or event.status == status:
                yield event
        if result.next_after_seq is None:
            return
        after_seq = result.next_after_seq


def cmd_events(ctx: Context) -> int:
    a = ctx.args
    limit = None if a.all else a.limit
    events: list[Event] = []
    more = False
    for event in _matching(ctx, a.stream, a.status, a.after_seq, page=min(limit or 1000, 1000) + 1):
        if limit is not None and len(events) == limit:
            more = True
            break
        events.append(event)
    next_after = events[-1].seq if more and events else None

    def human() -> str:
        if not events:
            return "no events"
        text = table(EVENT_HEADERS, event_rows(events), terminal_width(ctx.out))
        if next_after is not None:
            text += f"\n(more: --after-seq {next_after}, or --all)"
        return text

    ctx.emit({"events": events, "next_after_seq": next_after}, human)
    return EXIT_OK


def cmd_consume_op(ctx: Context) -> int:
    """``process`` / ``retry``: the operations themselves, leases and long polls included."""
    a = ctx.args
    op = ctx.client.process_events if a.command == "process" else ctx.client.retry_events
    page = op(a.stream, limit=a.limit, after_seq=a.after_seq, lease_seconds=a.lease, wait_seconds=a.wait)

    def human() -> str:
        if not page.events:
            return "no events"
        headers = EVENT_HEADERS
        rows = event_rows(page.events)
        if a.lease:
            headers = ("SEQ", "ID", "LEASE_ID", "DELIVERIES", "BODY")
            rows = [[e.seq, e.id, e.lease_id, e.deliveries, compact(e.body)] for e in page.events]
        return table(headers, rows, terminal_width(ctx.out))

    ctx.emit({"events": page.events, "next_after_seq": page.next_after_seq}, human)
    return EXIT_OK


def cmd_write(ctx: Context) -> int:
    a = ctx.args
    if a.from_file is not None:
        if a.events or a.key:
            raise UsageError("--from takes the events from the file: give no EVENT arguments and no --key")
        return _write_file(ctx)
    if not a.events:
        raise UsageError("give an EVENT (JSON) or --from FILE")
    values = [json_value(v) for v in a.events]
    if len(values) == 1:
        written = ctx.client.write_event(a.stream, values[0], key=a.key)
        note = " (duplicate key: the earlier event)" if written.duplicate else ""
        ctx.emit(
            {"event": written.event, "duplicate": written.duplicate},
            lambda: f"wrote event {written.event.id} (seq {written.event.seq}){note}",
        )
        return EXIT_OK
    if a.key:
        raise UsageError("--key applies to one event; several are written with write_events, without keys")
    events: list[Event] = []
    for start in range(0, len(values), MAX_BATCH):
        events += ctx.client.write_events(a.stream, values[start : start + MAX_BATCH])
    ctx.emit(
        {"events": events}, lambda: f"wrote {len(events)} events (seq {events[0].seq}..{events[-1].seq})"
    )
    return EXIT_OK


def _lines(ctx: Context, path: str) -> tuple[Iterator[tuple[int, bytes]], Callable[[], int], float | None]:
    """(line number, line) pairs, bytes read so far, and the size if known."""
    if path == "-":
        stream = ctx.stdin.buffer if hasattr(ctx.stdin, "buffer") else None
        if stream is None:
            data = ctx.stdin.read().encode("utf-8")
            lines = data.splitlines(keepends=True)
            counter = [0]

            def gen_text() -> Iterator[tuple[int, bytes]]:
                for n, line in enumerate(lines, 1):
                    counter[0] += len(line)
                    yield n, line

            return gen_text(), lambda: counter[0], None
        source, size = stream, None
    else:
        try:
            source = open(path, "rb")  # noqa: SIM115 - closed when the generator ends
            size = float(os.fstat(source.fileno()).st_size) or None
        except OSError as e:
            raise InputError(f"cannot read {path}: {e.strerror}") from None
    read = [0]

    def gen() -> Iterator[tuple[int, bytes]]:
        try:
            for n, line in enumerate(source, 1):
                read[0] += len(line)
                yield n, line
        finally:
            if source is not getattr(ctx.stdin, "buffer", None):
                source.close()

    return gen(), lambda: read[0], size


def _write_file(ctx: Context) -> int:
    """JSON Lines into write_events batches, several batches pipelined at once."""
    a = ctx.args
    batch_size = a.batch
    lines, bytes_read, size = _lines(ctx, a.from_file)
    progress = ctx.progress(size, "events")
    written = 0
    first_seq = last_seq = None
    batches: list[list[Any]] = []
    current: list[Any] = []
    bad: InputError | None = None

    def flush() -> None:
        nonlocal written, first_seq, last_seq
        if not batches:
            return
        pipe = ctx.client.pipeline()
        for b in batches:
            pipe.write_events(a.stream, b)

        def done(_i: int, result: Any) -> None:
            nonlocal written, first_seq, last_seq
            if isinstance(result, list) and result:
                written += len(result)
                first_seq = result[0].seq if first_seq is None else first_seq
                last_seq = result[-1].seq
                progress.update(written, bytes_read() if size else None)

        pipe.execute(on_result=done)
        batches.clear()
        for result in pipe.results:
            if isinstance(result, EventBusError):
                raise result

    try:
        for number, line in lines:
            if not line.strip():
                continue
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                bad = InputError(f"{a.from_file}:{number}: not valid JSON")
                break
            if value is None:
                bad = InputError(f"{a.from_file}:{number}: an event cannot be null")
                break
            current.append(value)
            if len(current) == batch_size:
                batches.append(current)
                current = []
                if len(batches) == a.pipeline:
                    flush()
        if current:
            batches.append(current)
        flush()
    finally:
        progress.update(written, bytes_read() if size else None, force=True)
        progress.close()
    if bad is not None:
        raise InputError(f"{bad}; {written} events before it were written")
    ctx.emit(
        {"written": written, "first_seq": first_seq, "last_seq": last_seq},
        lambda: f"wrote {written} events to {a.stream}"
        + (f" (seq {first_seq}..{last_seq})" if written else ""),
    )
    return EXIT_OK


def cmd_mark(ctx: Context) -> int:
    a = ctx.args
    if len(a.ids_and_status) < 2:
        raise UsageError(
            "give one or more event IDs, then the status (0-3 or unprocessed, processed, retry, dead)"
        )
    *ids, status_text = a.ids_and_status
    try:
        status = Status.parse(status_text)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if ids == ["-"]:
        ids = [line.strip() for line in ctx.stdin if line.strip()]
        if not ids:
            raise UsageError("no event IDs on standard input")
    if len(ids) == 1 and a.ids_and_status[0] != "-":
        ctx.client.mark_event(ids[0], status, lease_id=a.lease_id)
        ctx.emit({"marked": 1, "not_found": [], "lease_lost": []},
                 lambda: f"marked {ids[0]} {status_name(status)}")
        return EXIT_OK
    marked, not_found, lost = 0, [], []
    for start in range(0, len(ids), MAX_MARK_BATCH):
        result = ctx.client.mark_events(ids[start : start + MAX_MARK_BATCH], status, lease_id=a.lease_id)
        marked += result.marked
        not_found += result.not_found
        lost += result.lease_lost

    def human() -> str:
        text = f"marked {marked} events {status_name(status)}"
        if not_found:
            text += f"\nnot found: {' '.join(not_found)}"
        if lost:
            text += f"\nlease lost: {' '.join(lost)}"
        return text

    ctx.emit({"marked": marked, "not_found": not_found, "lease_lost": lost}, human)
    return EXIT_REFUSED if not_found or lost else EXIT_OK


def _last_seq(ctx: Context, stream: str) -> int | None:
    """The stream's newest seq without reading the stream: seqs only grow, so
    search for the largest after_seq that still finds an event (O(log seq)
    requests of one event each)."""
    client = ctx.client
    first = client.get_stream_events(stream, limit=1).events
    if not first:
        return None
    low = first[0].seq  # an event exists after low - 1
    step = 1
    while client.get_stream_events(stream, limit=1, after_seq=low + step - 1).events:
        low, step = low + step, step * 2
    # events exist after low - 1; none after low + step - 1: narrow down.
    lo, hi = low - 1, low + step - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if client.get_stream_events(stream, limit=1, after_seq=mid).events:
            lo = mid
        else:
            hi = mid
    return hi


#: The most events one get_stream_events may ask for (PROTOCOL.md: limit 1 to 10,000).
_MAX_LIMIT = 10_000


def _tail_start(ctx: Context, stream: str, n: int) -> int:
    """after_seq from which the last ``n`` events follow."""
    last = _last_seq(ctx, stream)
    if last is None or n <= 0:
        return last or 0
    lo, hi = 0, last  # the smallest after_seq with at most n events after it
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if _more_than(ctx, stream, n, mid):
            lo = mid
        else:
            hi = mid
    return hi if _more_than(ctx, stream, n, lo) else lo


def _more_than(ctx: Context, stream: str, n: int, after_seq: int) -> bool:
    """Are there more than ``n`` events after ``after_seq``? Counted a page at
    a time: a request asks for 10,000 at most, and a server may send fewer
    than asked (its ``max_page``), saying where the next page starts."""
    seen = 0
    next_after: int | None = after_seq
    while next_after is not None:
        limit = min(n + 1 - seen, _MAX_LIMIT)
        page = ctx.client.get_stream_events(stream, limit=limit, after_seq=next_after)
        seen += len(page.events)
        if seen > n:
            return True
        next_after = page.next_after_seq
    return False


def cmd_tail(ctx: Context) -> int:
    """Print new events as they come: read with after_seq, then long-poll
    (process_events with wait_seconds, read-only) for more."""
    a = ctx.args
    client = ctx.client
    if a.after_seq is not None:
        after = a.after_seq
    elif a.from_start:
        after = 0
    else:
        client.get_stream_info(a.stream)  # stream_not_found early
        after = _tail_start(ctx, a.stream, a.lines)
    shown = 0
    width = terminal_width(ctx.out)
    while True:
        page = client.get_stream_events(a.stream, limit=1000, after_seq=after)
        for event in page.events:
            if ctx.json:
                ctx.print(to_json(event))
            else:
                line = (f"{event.seq:>8}  {when(event.created_at)}  {status_name(event.status):<11}  "
                        f"{event.id}  {compact(event.body)}")
                ctx.print(line[:width] if width else line)
            after = event.seq
            shown += 1
            if a.count is not None and shown >= a.count:
                ctx.out.flush()
                return EXIT_OK
        ctx.out.flush()
        if page.next_after_seq is not None:
            continue
        # Nothing newer: wait until something is written (or the wait ends).
        client.process_events(a.stream, limit=1, after_seq=after, wait_seconds=a.wait)


def cmd_export(ctx: Context) -> int:
    a = ctx.args
    out: TextIO = ctx.out
    opened = None
    if a.output and a.output != "-":
        try:
            opened = out = open(a.output, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as e:
            raise InputError(f"cannot write {a.output}: {e.strerror}") from None
    try:
        info = ctx.client.get_stream_info(a.stream)
        total = None
        if info.stats is not None:
            total = info.stats.total if a.status is None else {
                Status.UNPROCESSED: info.stats.unprocessed, Status.PROCESSED: info.stats.processed,
                Status.RETRY: info.stats.retry, Status.DEAD: info.stats.dead}[a.status]
        progress = ctx.progress(total or None, "events")
        count = 0
        try:
            for event in _matching(ctx, a.stream, a.status, a.after_seq, page=5000):
                out.write((compact(event.body) if a.bodies else to_json(event)) + "\n")
                count += 1
                progress.update(count)
        finally:
            progress.update(count, force=True)
            progress.close()
    finally:
        if opened is not None:
            opened.close()
    if opened is not None or not out.isatty():
        if opened is not None and not ctx.json:
            ctx.err.write(f"exported {count} events to {a.output}\n")
    return EXIT_OK


def cmd_hash_secret(ctx: Context) -> int:
    from eventbus.secrets import hash_secret

    secret = ctx.args.secret
    if secret is None:
        if ctx.stdin.isatty():
            secret = getpass.getpass("secret: ")
            if getpass.getpass("again: ") != secret:
                raise UsageError("the two secrets differ")
        else:
            secret = ctx.stdin.read()
            if secret.endswith("\n"):  # the shell's line end, not the secret's
                secret = secret[:-1].removesuffix("\r")
    if not secret:
        raise UsageError("the secret must not be empty")
    hashed = hash_secret(secret)
    ctx.emit({"client_secret": hashed}, lambda: hashed)
    return EXIT_OK


# -- the parser --------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    g = common.add_argument_group("connection (flags win over EVENTBUS_* variables, then the profile file)")
    S = argparse.SUPPRESS
    g.add_argument("-a", "--address", default=S, help="host:port, tcp://host:port or tls://host:port "
                   "[EVENTBUS_ADDRESS; default 127.0.0.1:8080]")
    g.add_argument("--client-id", default=S, help="[EVENTBUS_CLIENT_ID]")
    g.add_argument("--client-secret", default=S, help="[EVENTBUS_CLIENT_SECRET] (visible in ps: prefer the "
                   "variable or the profile file)")
    g.add_argument("--tls", action="store_const", const=True, default=S, help="use TLS [EVENTBUS_TLS=1]")
    g.add_argument("--ca-file", default=S, help="CA certificates to trust for TLS [EVENTBUS_CA_FILE]")
    g.add_argument("--insecure", action="store_const", const=True, default=S,
                   help="TLS without checking the certificate [EVENTBUS_INSECURE=1]")
    g.add_argument("--timeout", type=float, default=S, help="seconds to wait for an answer [30]")
    g.add_argument("--profile", default=S, help="profile name in the profile file [EVENTBUS_PROFILE]")
    g.add_argument("--profile-file", default=S,
                   help="[EVENTBUS_PROFILE_FILE; default ~/.config/eventbus/cli.yaml]")
    g.add_argument("--json", action="store_const", const=True, default=S, help="JSON output for scripts")

    parser = argparse.ArgumentParser(
        prog="eventbus",
        parents=[common],
        description="Talk to an Event Bus server.",
        epilog="Exit codes: 0 ok, 1 refused by the server, 2 usage, 3 no answer (connection), "
        "4 bad input file, 130 interrupted.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def command(name: str, func: Callable[[Context], int], help: str, **kw: Any) -> argparse.ArgumentParser:
        p = sub.add_parser(name, parents=[common], help=help, description=help, **kw)
        p.set_defaults(func=func)
        return p

    command("health", cmd_health, "check that the server answers")
    p = command("streams", cmd_streams, "list streams with their counts by status")
    p.add_argument("--no-stats", action="store_true", help="names only (one request, not one per stream)")

    p = command("create", cmd_create, "create a stream")
    p.add_argument("stream")
    p.add_argument("--max-deliveries", type=int, help="dead-letter an event after this many leases")
    p.add_argument("--retention", type=duration, help="keep events this long (3600, 90m, 12h, 7d)")

    p = command("delete", cmd_delete, "delete a stream and all its events")
    p.add_argument("stream")
    p.add_argument("-y", "--yes", action="store_true", help="do not ask (it asks only on a terminal)")

    for name in ("stats", "info"):
        p = command(name, cmd_stats, "a stream and its counts by status")
        p.add_argument("stream")

    p = command("events", cmd_events, "list a stream's events (all, or of one status)")
    p.add_argument("stream")
    p.add_argument("-s", "--status", type=status_arg, help="0-3 or unprocessed, processed, retry, dead")
    p.add_argument("-n", "--limit", type=int, default=100, help="at most this many [100]")
    p.add_argument("--after-seq", type=int, help="only events after this seq (paging)")
    p.add_argument("--all", action="store_true", help="every matching event, however many")

    for name, what in (("process", "unprocessed"), ("retry", "retry (status 2)")):
        p = command(name, cmd_consume_op, f"take {what} events ({name}_events), optionally leased")
        p.add_argument("stream")
        p.add_argument("--lease", type=int, metavar="SECONDS", help="lease them to this caller")
        p.add_argument("--wait", type=float, metavar="SECONDS", help="long-poll up to this long (max 30)")
        p.add_argument("-n", "--limit", type=int)
        p.add_argument("--after-seq", type=int)

    p = command("write", cmd_write, "write events: JSON arguments, or JSON Lines --from a file")
    p.add_argument("stream")
    p.add_argument("events", nargs="*", metavar="EVENT", help="a JSON value, e.g. '{\"id\": 1}'")
    p.add_argument("--key", help="idempotency key: a repeat writes nothing (one EVENT only)")
    p.add_argument(
        "--from", dest="from_file", metavar="FILE", help="JSON Lines file, one event a line ('-': stdin)"
    )
    p.add_argument("--batch", type=int, default=500, choices=range(1, MAX_BATCH + 1), metavar="N",
                   help="events per write_events request [500]")
    p.add_argument("--pipeline", type=int, default=8, help=argparse.SUPPRESS)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = command("mark", cmd_mark, "set events' status: mark ID [ID ...] STATUS ('-' reads IDs from stdin)")
    p.add_argument("ids_and_status", nargs="+", metavar="ID... STATUS")
    p.add_argument("--lease-id", help="only while this lease is current")

    p = command("tail", cmd_tail, "print a stream's events as they are written (Ctrl-C stops)")
    p.add_argument("stream")
    p.add_argument("-n", "--lines", type=int, default=10, help="start with the last N events [10]")
    p.add_argument("--from-start", action="store_true", help="start with the first event")
    p.add_argument("--after-seq", type=int, help="start after this seq")
    p.add_argument("-c", "--count", type=int, help="stop after printing this many")
    p.add_argument("--wait", type=float, default=5, help=argparse.SUPPRESS)

    p = command("export", cmd_export, "a stream's events as JSON Lines")
    p.add_argument("stream")
    p.add_argument("-s", "--status", type=status_arg)
    p.add_argument("--after-seq", type=int)
    p.add_argument("--bodies", action="store_true", help="only the bodies (what write --from reads)")
    p.add_argument("-o", "--output", help="a file instead of stdout")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = command("hash-secret", cmd_hash_secret, "print the scrypt hash of a client secret for config.yaml")
    p.add_argument("secret", nargs="?", help="the secret (default: prompt, or read stdin when piped)")
    return parser


def main(argv: list[str] | None = None, *, stdin: TextIO | None = None, stdout: TextIO | None = None,
         stderr: TextIO | None = None, env: dict[str, str] | None = None) -> int:
    stdin = stdin or sys.stdin
    stdout = stdout or sys.stdout
    stderr = stderr or sys.stderr
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: --help (0) or a usage error (2)
        return int(e.code or 0)
    json_mode = bool(getattr(args, "json", False))

    def fail(code: int, message: str, error: dict[str, Any] | None = None) -> int:
        if json_mode and error is not None:
            stdout.write(to_json({"error": error}) + "\n")
        stderr.write(f"eventbus: {message}\n")
        return code

    try:
        settings = resolve(vars(args), os.environ if env is None else env)
    except SettingsError as e:
        return fail(EXIT_USAGE, str(e), {"code": "usage", "reason": str(e)})
    ctx = Context(args, settings, stdout, stderr, stdin)
    started = time.monotonic()
    try:
        return args.func(ctx)
    except UsageError as e:
        return fail(EXIT_USAGE, str(e), {"code": "usage", "reason": str(e)})
    except InputError as e:
        return fail(EXIT_INPUT, str(e), {"code": "input", "reason": str(e)})
    except RequestError as e:
        return fail(EXIT_REFUSED, f"{e.reason} ({e.code})", {"code": e.code, "reason": e.reason})
    except (ConnectionFailed, EventBusError) as e:
        return fail(EXIT_CONNECTION, str(e), {"code": "connection", "reason": str(e)})
    except KeyboardInterrupt:
        if time.monotonic() - started > 0:
            stderr.write("\n")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader went away (``| head``): that is how the output ends.
        try:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the interpreter's flush
        except OSError:
            pass
        return EXIT_OK
    finally:
        ctx.close()
