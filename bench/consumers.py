"""Competing consumers: processes that lease a page, then mark it done.

Each consumer is its own process with one connection, looping: a leasing
``process_events`` (limit 100, lease 30 s), then ``mark_events`` of what it
got (status 1). Redis's equivalent is ``XREADGROUP ... COUNT 100`` then
``XACK``. The stream is filled beforehand; a consumer stops at the end of
the run or when it finds nothing left to lease.
"""

from __future__ import annotations

import multiprocessing as mp
import time
from dataclasses import dataclass, field

from bench import wire
from bench.client import LineClient, RespClient
from bench.stats import percentile

PAGE = 100
LEASE_SECONDS = 30


@dataclass
class Consumed:
    """What a set of consumers did together."""

    consumers: int
    events: int
    seconds: float
    errors: int = 0
    first_error: str = ""
    fetch_us: list[float] = field(default_factory=list)  # lease / XREADGROUP round trips
    ack_us: list[float] = field(default_factory=list)  # mark_events / XACK round trips

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def fetch_p(self, q: float) -> float:
        return percentile(self.fetch_us, q)


def _eventbus_consumer(port: int, stream: str, duration: float, go: mp.Event, out: mp.Queue) -> None:
    with LineClient(port) as client:
        lease = wire.lease(stream, PAGE, LEASE_SECONDS)
        result = Consumed(1, 0, 0.0)
        go.wait()
        clock = time.perf_counter
        start = clock()
        end = start + duration
        while True:
            t0 = clock()
            if t0 >= end:
                break
            client.sock.sendall(lease)
            response = client.read()
            t1 = clock()
            result.fetch_us.append((t1 - t0) * 1e6)
            if response.get("status") is not True:
                result.errors += 1
                result.first_error = str(response)[:200]
                break
            events = response["body"]["events"]
            if not events:
                break  # drained: the rest is leased by the others
            ids = [e["id"] for e in events]
            client.sock.sendall(wire.mark_events(ids, 1))
            marked = client.read()
            result.ack_us.append((clock() - t1) * 1e6)
            if marked.get("status") is not True or marked["body"]["marked"] != len(ids):
                result.errors += 1
                result.first_error = result.first_error or str(marked)[:200]
            result.events += len(ids)
        result.seconds = clock() - start
    out.put(result)


def _redis_consumer(port: int, key: str, index: int, duration: float, go: mp.Event, out: mp.Queue) -> None:
    with RespClient(port) as client:
        read = wire.resp("XREADGROUP", "GROUP", "bench", f"c{index}", "COUNT", str(PAGE), "STREAMS", key, ">")
        result = Consumed(1, 0, 0.0)
        go.wait()
        clock = time.perf_counter
        start = clock()
        end = start + duration
        while True:
            t0 = clock()
            if t0 >= end:
                break
            reply = client.command(read)
            t1 = clock()
            result.fetch_us.append((t1 - t0) * 1e6)
            entries = reply[0][1] if reply else []
            if not entries:
                break
            ids = [entry[0] for entry in entries]
            acked = client.command(wire.resp("XACK", key, "bench", *ids))
            result.ack_us.append((clock() - t1) * 1e6)
            if acked != len(ids):
                result.errors += 1
                result.first_error = result.first_error or f"XACK acked {acked} of {len(ids)}"
            result.events += len(ids)
        result.seconds = clock() - start
    out.put(result)


def _run(targets: list[tuple], duration: float) -> Consumed:
    ctx = mp.get_context("fork")
    go = ctx.Event()
    out = ctx.Queue()
    procs = [ctx.Process(target=fn, args=(*args, duration, go, out), daemon=True) for fn, args in targets]
    for p in procs:
        p.start()
    time.sleep(0.3)  # let them connect
    go.set()
    results = []
    deadline = time.monotonic() + duration + 60
    for _ in procs:
        results.append(out.get(timeout=max(1.0, deadline - time.monotonic())))
    for p in procs:
        p.join(10)
    total = Consumed(len(results), 0, max(r.seconds for r in results))
    for r in results:
        total.events += r.events
        total.errors += r.errors
        total.first_error = total.first_error or r.first_error
        total.fetch_us.extend(r.fetch_us)
        total.ack_us.extend(r.ack_us)
    return total


def consume_eventbus(port: int, stream: str, consumers: int, duration: float) -> Consumed:
    """``consumers`` processes leasing and marking ``stream`` for ``duration`` s."""
    return _run([(_eventbus_consumer, (port, stream)) for _ in range(consumers)], duration)


def consume_redis(port: int, key: str, consumers: int, duration: float) -> Consumed:
    """The same with a Redis consumer group on stream ``key``."""
    return _run([(_redis_consumer, (port, key, i)) for i in range(consumers)], duration)


def fill_eventbus(port: int, stream: str, count: int, batch: int = 1000) -> None:
    """Create ``stream`` and write ``count`` events into it, in batches."""
    with LineClient(port) as client:
        client.call(wire.create_stream(stream))
        full, rest = divmod(count, batch)
        requests = [wire.write_events(stream, batch)] * full
        if rest:
            requests.append(wire.write_events(stream, rest))
        client.pipeline(requests, window=4)


def fill_redis(port: int, key: str, count: int) -> None:
    """Create stream ``key`` with a consumer group and ``count`` entries."""
    with RespClient(port) as client:
        client.command(wire.resp("XGROUP", "CREATE", key, "bench", "0", "MKSTREAM"))
        client.pipeline([wire.xadd(key)] * count)


def drop_redis_key(port: int, key: str) -> None:
    with RespClient(port) as client:
        client.command(wire.resp("UNLINK", key))


