"""Event ids: valid, time-ordered UUIDv7s, unique within and across batches."""

from __future__ import annotations

import uuid

from eventbus.ids import uuid7s

T = 1_764_438_000_123_456  # epoch microseconds


def test_each_id_is_a_uuid7_carrying_its_own_millisecond() -> None:
    nows = [T, T, T + 5_000, T + 5_000, T + 1_000_000]
    ids = uuid7s(nows)
    assert len(ids) == len(nows)
    for text, now in zip(ids, nows):
        u = uuid.UUID(text)
        assert str(u) == text  # canonical, lower-case form
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert u.int >> 80 == now // 1000


def test_ids_sort_by_time_and_never_repeat() -> None:
    batches = [uuid7s([T + n * 1000] * 500) for n in range(20)]
    every = [i for batch in batches for i in batch]
    assert len(set(every)) == len(every)
    assert sorted(every) == every  # later milliseconds sort later; within one call, call order
    again = uuid7s([T] * 500)
    assert not set(again) & set(batches[0])  # a second call at the same time draws new random bits


def test_an_empty_batch_has_no_ids() -> None:
    assert uuid7s([]) == []
