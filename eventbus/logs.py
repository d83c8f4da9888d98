"""``--log-format json``: one JSON object per line, for log shippers.

Each line carries ``time`` (RFC 3339, UTC), ``level``, ``namespace``,
``message`` (the formatted text, as the text log would show it), the event's
own structured fields (``stream``, ``operation``, ``peer``...; values JSON
cannot hold are written as their ``repr``), and for a logged failure its
``error`` and ``traceback``.

twistd builds its log observer itself, after the plugin's options are
parsed; :func:`use_json_logs` therefore points twistd's ``--logger`` option
at :func:`json_observer`, which writes where twistd would have written text
(stdout with ``-n``, else ``--logfile``, else ``twistd.log``).
"""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from typing import IO, Any

import orjson
from twisted.logger import ILogObserver, formatEvent
from twisted.python import logfile
from zope.interface import implementer

_target: dict[str, Any] = {"logfile": "-", "nodaemon": True}
_SKIP = frozenset({"message", "format", "isError", "time", "system", "why", "failure"})


def use_json_logs(twistd_options: Any) -> None:
    """Have twistd log JSON lines (call from the plugin's postOptions)."""
    if twistd_options is None or twistd_options.get("logger"):
        return  # not under twistd, or the operator chose a logger already
    _target["logfile"] = twistd_options.get("logfile")
    _target["nodaemon"] = bool(twistd_options.get("nodaemon"))
    twistd_options["logger"] = "eventbus.logs.json_observer"


def json_observer() -> JSONLinesObserver:
    """The observer factory twistd's ``--logger`` calls."""
    name = _target.get("logfile")
    out: IO[str]
    if name == "-" or (not name and _target.get("nodaemon")):
        out = sys.stdout
    else:
        out = logfile.LogFile.fromFullPath(name or "twistd.log")
    return JSONLinesObserver(out)


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
