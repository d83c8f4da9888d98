"""The server's log: the configured level, and ``--log-format json``.

twistd builds its log observer itself, after the plugin's options are
parsed; :func:`use_logs` therefore points twistd's ``--logger`` option at
:func:`observer`, which writes where twistd would have written (stdout with
``-n``, else ``--logfile``, else ``twistd.log``, reopened on SIGUSR1 as
twistd does), text as twistd writes it or one JSON object per line, and
leaves out events below the config's ``logger.level``. An operator's own
``--logger`` or ``--syslog`` wins, level and all.

A JSON line carries ``time`` (RFC 3339, UTC), ``level``, ``namespace``,
``message`` (the formatted text, as the text log would show it), the event's
own structured fields (``stream``, ``operation``, ``peer``...; values JSON
cannot hold are written as their ``repr``), and for a logged failure its
``error`` and ``traceback``.
"""

from __future__ import annotations

import signal
import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from twisted.logger import (
    FilteringLogObserver,
    ILogFilterPredicate,
    ILogObserver,
    LogLevel,
    PredicateResult,
    formatEvent,
    textFileLogObserver,
)
from twisted.python import logfile
from zope.interface import implementer

_target: dict[str, Any] = {"logfile": "-", "nodaemon": True, "format": "text", "level": "info"}
_SKIP = frozenset({"message", "format", "isError", "time", "system", "why", "failure"})


def chosen_by_operator(twistd_options: Any) -> bool:
    """Did the operator give twistd's ``--logger`` or ``--syslog``?"""
    return bool(twistd_options.get("logger") or twistd_options.get("syslog"))


def use_logs(twistd_options: Any, log_format: str, level: str) -> None:
    """Have twistd log through :func:`observer`, in ``log_format`` ("text"
    or "json"), from ``level`` up (call from the plugin's postOptions)."""
    if twistd_options is None or chosen_by_operator(twistd_options):
        return  # not under twistd, or the operator chose where logs go
    _target.update(
        logfile=twistd_options.get("logfile"),
        nodaemon=bool(twistd_options.get("nodaemon")),
        format=log_format,
        level=level,
    )
    twistd_options["logger"] = "eventbus.logs.observer"


def observer() -> ILogObserver:
    """The observer factory twistd's ``--logger`` calls."""
    out = _log_file()
    inner = JSONLinesObserver(out) if _target["format"] == "json" else textFileLogObserver(out)
    # The config takes "warning" too (eventbus.config); Twisted calls it "warn".
    level = LogLevel.levelWithName("warn" if _target["level"] == "warning" else _target["level"])
    return FilteringLogObserver(inner, [AtLeast(level)])


def _log_file() -> IO[str]:
    """Where twistd itself would have written its log."""
    name = _target.get("logfile")
    if name == "-" and not _target.get("nodaemon"):
        sys.exit("Daemons cannot log to stdout, exiting!")  # as twistd says it
    if name == "-" or (not name and _target.get("nodaemon")):
        return sys.stdout
    out = logfile.LogFile.fromFullPath(name or "twistd.log")
    if not signal.getsignal(signal.SIGUSR1):
        # As twistd: SIGUSR1 starts a new file (log rotation tools send it).
        signal.signal(signal.SIGUSR1, lambda _signum, _frame: _rotate(out))
    return out


def _rotate(out: logfile.LogFile) -> None:
    from twisted.internet import reactor

    reactor.callFromThread(out.rotate)


@implementer(ILogFilterPredicate)
class AtLeast:
    """Leaves out events below ``level``; keeps those that carry none."""

    def __init__(self, level: Any) -> None:
        self.level = level

    def __call__(self, event: dict[str, Any]) -> Any:
        level = event.get("log_level")
        return PredicateResult.no if level is not None and level < self.level else PredicateResult.maybe


@implementer(ILogObserver)
class JSONLinesObserver:
    def __init__(self, out: IO[str]) -> None:
        self.out = out

    def __call__(self, event: dict[str, Any]) -> None:
        self.out.write(event_to_json(event) + "\n")
        self.out.flush()


def event_to_json(event: dict[str, Any]) -> str:
    record: dict[str, Any] = {
        "time": datetime.fromtimestamp(event.get("log_time") or 0, UTC).isoformat(timespec="microseconds")
        .replace("+00:00", "Z"),
        "level": getattr(event.get("log_level"), "name", "info"),
        "namespace": event.get("log_namespace", ""),
        "message": formatEvent(event) if event.get("log_format") is not None else _legacy_text(event),
    }
    system = event.get("log_system")
    if system and system != "-":
        record["system"] = system
    failure = event.get("log_failure")
    if failure is not None:
        record["error"] = failure.getErrorMessage()
        record["traceback"] = failure.getTraceback()
    for key, value in event.items():
        if key.startswith("log_") or key in _SKIP or key in record:
            continue
        record[key] = value
    return orjson.dumps(record, default=repr, option=orjson.OPT_NON_STR_KEYS).decode("utf-8")


def _legacy_text(event: dict[str, Any]) -> str:
    """Events from twisted.python.log.msg carry ``message``, not ``log_format``."""
    message = event.get("message")
    if isinstance(message, (tuple, list)):
        return " ".join(str(m) for m in message)
    return str(message or "")
