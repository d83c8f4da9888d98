"""Identifiers: time-ordered event ids and unguessable lease tokens.

Event ids are UUIDv7 (RFC 9562): a valid UUID to every client, and since
they grow with time, inserting them into a unique index appends at the end
instead of splitting random pages as uuid4 does.
"""

from __future__ import annotations

import os
import uuid


def _format(n: int) -> str:
    h = f"{n:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def uuid7s(now_us: int, count: int) -> list[str]:
    """``count`` UUIDv7 strings for the time ``now_us`` (epoch
    microseconds): one read of the system's
    randomness for all of them (a batch write makes hundreds at once)."""
    stamp = ((now_us // 1000) & 0xFFFFFFFFFFFF) << 80 | 0x7 << 76 | 0x2 << 62
    pool = os.urandom(10 * count)
    out = []
    for k in range(0, 10 * count, 10):
        rand = int.from_bytes(pool[k : k + 10], "big")
        out.append(_format(stamp | (rand >> 68 & 0xFFF) << 64 | (rand & 0x3FFFFFFFFFFFFFFF)))
    return out


def random_token() -> str:
    """A random UUIDv4 string: for stream ids and lease tokens."""
    return str(uuid.uuid4())
