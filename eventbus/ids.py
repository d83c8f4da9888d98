"""Identifiers: time-ordered event ids and unguessable lease tokens.

Event ids are UUIDv7 (RFC 9562): a valid UUID to every client, and since
they grow with time, inserting them into a unique index appends at the end
instead of splitting random pages as uuid4 does.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Sequence


def uuid7s(nows_us: Sequence[int]) -> list[str]:
    """One UUIDv7 string per time in ``nows_us`` (epoch microseconds).

    RFC 9562's method 2: the random bits are drawn once per call and count up
    from there, so a whole group commit costs one read of the system's
    randomness and one short format per id (ids of one call sort in call
    order within a millisecond; across calls they are random).
    """
    r = int.from_bytes(os.urandom(10), "big")
    middle = f"-7{r >> 68 & 0xFFF:03x}-{0x8000 | (r >> 48 & 0x3FFF):04x}-"
    base = r & 0x7FFFFFFFFFFF  # 47 bits: counting up stays within the 48-bit field
    out = []
    last_ms = -1
    head = ""
    for k, now in enumerate(nows_us):
        ms = now // 1000
        if ms != last_ms:
            last_ms = ms
            head = f"{ms >> 16 & 0xFFFFFFFF:08x}-{ms & 0xFFFF:04x}{middle}"
        out.append(f"{head}{base + k:012x}")
    return out


def random_token() -> str:
    """A random UUIDv4 string: for stream ids and lease tokens."""
    return str(uuid.uuid4())
