"""Time as the bus sees it: integer epoch microseconds, RFC 3339 on the wire."""

from __future__ import annotations

import time
from functools import lru_cache
from typing import Protocol


class IClockLike(Protocol):
    def seconds(self) -> float: ...


def now_us(clock: IClockLike) -> int:
    """Read the clock once, as epoch microseconds."""
    return int(clock.seconds() * 1_000_000)


@lru_cache(maxsize=4096)
def _second_prefix(seconds: int) -> str:
    t = time.gmtime(seconds)
    return "{:04d}-{:02d}-{:02d}T{:02d}:{:02d}:{:02d}".format(*t[:6])


def rfc3339(us: int) -> str:
    """``2026-11-29T07:47:13.123456Z`` for epoch microseconds ``us``."""
    seconds, micros = divmod(us, 1_000_000)
    return f"{_second_prefix(seconds)}.{micros:06d}Z"
