"""The scenarios of issue 3, each run against Event Bus and the references.

A round runs every selected scenario once against each target, the target
order rotating from round to round; medians over rounds and ratios within a
round (see :mod:`bench.results`) take out most of the noise of a shared
machine.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path

from bench import consumers, depth, loadgen, wire
from bench.client import LineClient, RespClient
from bench.idle import IdleConnections
from bench.results import ECHO, EVENTBUS, REDIS, Results, Sample
from bench.servers import EventBusServer, Server

#: Name -> what it measures; the order of the table.
SCENARIOS = {
    "write-64x1": "write_event, 64 connections x 1 in flight",
    "write-64x16": "write_event, 64 connections x 16 in flight",
    "latency": "write_event, 1 connection x 1 in flight (latency)",
    "batch": "write_events of 100 events, 8 connections x 1 in flight",
    "consume": "8 consumers: leasing process_events (limit 100) + mark_events",
    "scale": "write_event, 1 / 4 / 16 connections x 1 in flight (the chart)",
    "depth": "1,000,000 events in the stream + 10 streams x 100,000: writes 64x1, lease p99",
    "rss": "1,000 idle connections + the 64x1 write load: server RSS",
}
ROUND_SCENARIOS = ("write-64x1", "write-64x16", "latency", "batch", "consume", "scale")
SCALE_CONNECTIONS = (1, 4, 16)
WRITE_STREAM, BATCH_STREAM = "bench", "batch"


@dataclass
class Settings:
    quick: bool = False
    duration: float = 5.0
    warmup: float = 1.0
    rounds: int = 3
    consumers: int = 8
    depth_events: int = 1_000_000
    depth_streams: int = 10
    depth_stream_events: int = 100_000
    idle_connections: int = 1000
    rss_seconds: float = 60.0


class Runner:
    """Runs scenarios against the started servers, recording samples."""

    def __init__(
        self, settings: Settings, servers: dict[str, Server], scratch: Path, results: Results, say=print
    ) -> None:
        self.settings = settings
        self.servers = servers
        self.scratch = scratch
        self.results = results
        self.say = say
        self.targets = [t for t in (ECHO, EVENTBUS, REDIS) if t in servers]

    # -- helpers -------------------------------------------------------------------

    def _order(self, round_: int, targets: list[str] | None = None) -> list[str]:
        targets = targets or self.targets
        k = round_ % len(targets)
        return targets[k:] + targets[:k]

    def _request(self, target: str, batch: int = 0) -> bytes:
        if target == REDIS:
            return wire.xadd(WRITE_STREAM)
        if batch:
            return wire.write_events(BATCH_STREAM, batch)
        return wire.write_event(WRITE_STREAM)

    def _load(
        self, scenario: str, target: str, round_: int, connections: int, inflight: int,
        duration: float | None = None, batch: int = 0, server: Server | None = None,
    ) -> Sample:
        server = server or self.servers[target]
        resp = target == REDIS
        if resp and batch:
            # Redis has no batch write: the same events as pipelined XADDs.
            inflight, per_request, request = inflight * batch, 1, wire.xadd(WRITE_STREAM)
        else:
            per_request = batch or 1
            request = self._request(target, batch)
        cpu = server.cpu_seconds()
        load = loadgen.run(
            server.port, request, connections, inflight,
            duration or self.settings.duration, self.settings.warmup, resp=resp,
        )
        cpu = server.cpu_seconds() - cpu
        sample = Sample(
            scenario, target, round_, load.rate, load.rate * per_request,
            load.p50_us, load.p99_us, server.rss_mb(), load.errors,
            cpu_us=cpu * 1e6 / load.sent if load.sent else None,
        )
        if load.errors:
            sample.extra["first_error"] = load.first_error
        self.say(
            f"  {scenario:<12} {target:<15} {sample.events_per_s:>11,.0f} ev/s  "
            f"p50 {load.p50_us / 1000:7.2f} ms  p99 {load.p99_us / 1000:7.2f} ms  "
            f"cpu {sample.cpu_us or 0:6.1f} us/req"
            + (f"  ERRORS {load.errors}: {load.first_error[:80]}" if load.errors else "")
        )
        return self.results.add(sample)

    # -- set-up ----------------------------------------------------------------------

    def prepare(self) -> None:
        """Streams the loads write to."""
        if EVENTBUS in self.servers:
            with LineClient(self.servers[EVENTBUS].port) as client:
                client.call(wire.create_stream(WRITE_STREAM))
                client.call(wire.create_stream(BATCH_STREAM))

    # -- the round scenarios ------------------------------------------------------------

    def run_round(self, round_: int, selected: list[str]) -> None:
        for scenario in ROUND_SCENARIOS:
            if scenario in selected:
                getattr(self, "_" + scenario.replace("-", "_"))(round_)
        if REDIS in self.servers:
            with RespClient(self.servers[REDIS].port) as client:
                client.command(wire.resp("UNLINK", WRITE_STREAM))  # bound Redis's memory

    def _write_64x1(self, round_: int) -> None:
        for target in self._order(round_):
            self._load("write-64x1", target, round_, 64, 1)

    def _write_64x16(self, round_: int) -> None:
        for target in self._order(round_):
            self._load("write-64x16", target, round_, 64, 16)

    def _latency(self, round_: int) -> None:
        for target in self._order(round_):
            self._load("latency", target, round_, 1, 1)

    def _batch(self, round_: int) -> None:
        for target in self._order(round_):
            self._load("batch", target, round_, 8, 1, batch=100)

    def _scale(self, round_: int) -> None:
        duration = min(self.settings.duration, 3.0)
        for n in SCALE_CONNECTIONS:
            for target in self._order(round_):
                self._load(f"scale-{n}", target, round_, n, 1, duration=duration)

    def _consume(self, round_: int) -> None:
        s = self.settings
        # Enough for the whole run at the best rate seen so far (it may end early).
        seen = [x.events_per_s for x in self.results.samples if x.scenario == "consume"]
        expected = max(seen + [40_000.0])
        count = max(1000, min(1_000_000, int(expected * s.duration * 1.3)))
        if s.quick:
            count = min(count, 5000)
        for target in self._order(round_, [t for t in (EVENTBUS, REDIS) if t in self.servers]):
            server = self.servers[target]
            name = f"consume-{round_}"
            if target == EVENTBUS:
                consumers.fill_eventbus(server.port, name, count)
                cpu = server.cpu_seconds()
                got = consumers.consume_eventbus(server.port, name, s.consumers, s.duration)
            else:
                consumers.fill_redis(server.port, name, count)
                cpu = server.cpu_seconds()
                got = consumers.consume_redis(server.port, name, s.consumers, s.duration)
            cpu = server.cpu_seconds() - cpu
            if target == REDIS:
                consumers.drop_redis_key(server.port, name)
            requests = len(got.fetch_us) + len(got.ack_us)
            sample = Sample(
                "consume", target, round_, requests / got.seconds if got.seconds else 0.0, got.rate,
                got.fetch_p(0.5), got.fetch_p(0.99), server.rss_mb(), got.errors,
                cpu_us=cpu * 1e6 / requests if requests else None,
                extra={"filled": count, "drained": got.seconds < s.duration * 0.99},
            )
            if got.errors:
                sample.extra["first_error"] = got.first_error
            self.results.add(sample)
            self.say(
                f"  {'consume':<12} {target:<15} {got.rate:>11,.0f} ev/s  "
                f"fetch p50 {got.fetch_p(0.5) / 1000:6.2f} ms  p99 {got.fetch_p(0.99) / 1000:6.2f} ms"
                + ("  (drained the stream early)" if sample.extra["drained"] else "")
                + (f"  ERRORS {got.errors}: {got.first_error[:80]}" if got.errors else "")
            )

    # -- depth -----------------------------------------------------------------------------

    def depth(self) -> None:
        """Writes and leases on a deep database, interleaved with an empty one."""
        s = self.settings
        path = self.scratch / "deep.db"
        total = s.depth_events + s.depth_streams * s.depth_stream_events
        self.say(f"  building the deep database: {total:,} events ...")
        seconds = depth.build(path, s.depth_events, s.depth_streams, s.depth_stream_events)
        self.say(f"  built in {seconds:.1f} s ({total / seconds:,.0f} events/s through eventbus.storage)")
        self.results.notes.append(
            f"depth: {total:,} events built in {seconds:.0f} s through eventbus.storage "
            f"({total / seconds:,.0f} events/s)"
        )
        deep = EventBusServer(self.scratch, path, label="eventbus-deep").start()
        empty = EventBusServer(self.scratch, self.scratch / "empty.db", label="eventbus-empty").start()
        try:
            with LineClient(empty.port) as client:
                client.call(wire.create_stream(depth.DEEP_STREAM))
            request = wire.write_event(depth.DEEP_STREAM)
            pair = {"eventbus-deep": deep, "eventbus-empty": empty}
            for round_ in range(s.rounds):
                for label in self._order(round_, list(pair)):
                    server = pair[label]
                    cpu = server.cpu_seconds()
                    load = loadgen.run(server.port, request, 64, 1, s.duration, s.warmup)
                    cpu = server.cpu_seconds() - cpu
                    self.results.add(
                        Sample("depth-write", label, round_, load.rate, load.rate,
                               load.p50_us, load.p99_us, server.rss_mb(), load.errors,
                               cpu_us=cpu * 1e6 / load.sent if load.sent else None)
                    )
                    self.say(f"  {'depth-write':<12} {label:<15} {load.rate:>11,.0f} ev/s")
            # The empty database now holds what the writes above wrote.
            for label in ("eventbus-deep", "eventbus-empty"):
                server = pair[label]
                got = consumers.consume_eventbus(server.port, depth.DEEP_STREAM, 1, s.duration)
                self.results.add(
                    Sample("depth-lease", label, 0, got.rate * 2 / consumers.PAGE, got.rate,
                           got.fetch_p(0.5), got.fetch_p(0.99), server.rss_mb(), got.errors,
                           extra={"leases": len(got.fetch_us)})
                )
                self.say(
                    f"  {'depth-lease':<12} {label:<15} lease p50 {got.fetch_p(0.5) / 1000:.2f} ms  "
                    f"p99 {got.fetch_p(0.99) / 1000:.2f} ms  ({len(got.fetch_us)} leases)"
                )
        finally:
            deep.stop()
            empty.stop()

    # -- memory ------------------------------------------------------------------------------

    def rss(self) -> None:
        """Idle connections plus the 64x1 load; RSS sampled through the run."""
        # A server of its own: what it holds is this scenario's, not history's.
        server = EventBusServer(self.scratch, self.scratch / "rss.db", label="eventbus-rss").start()
        try:
            with LineClient(server.port) as client:
                client.call(wire.create_stream(WRITE_STREAM))
            self._rss(server)
        finally:
            server.stop()

    def _rss(self, server: EventBusServer) -> None:
        s = self.settings
        before = server.rss_mb()
        with IdleConnections(server.port, s.idle_connections) as idle:
            time.sleep(1.0)
            with_idle = server.rss_mb()
            samples: list[tuple[float, float]] = []
            result: dict[str, loadgen.Load] = {}
            run = threading.Thread(
                target=lambda: result.update(
                    load=loadgen.run(server.port, wire.write_event(WRITE_STREAM), 64, 1, s.rss_seconds, 0.5)
                )
            )
            start = time.monotonic()
            run.start()
            while run.is_alive():
                samples.append((time.monotonic() - start, server.rss_mb()))
                run.join(0.5)
            still_open = idle.count_open()
        load = result["load"]
        peak = max(r for _, r in samples)
        settled = [r for t, r in samples if t >= 0.25 * s.rss_seconds] or [samples[-1][1]]
        growth = settled[-1] - settled[0]
        self.results.add(
            Sample(
                "rss", EVENTBUS, 0, load.rate, load.rate, load.p50_us, load.p99_us, peak, load.errors,
                extra={
                    "rss_before_mb": round(before, 1),
                    "rss_idle_mb": round(with_idle, 1),
                    "rss_peak_mb": round(peak, 1),
                    "growth_mb": round(growth, 1),
                    "idle_connections": s.idle_connections,
                    "idle_still_open": still_open,
                    "seconds": s.rss_seconds,
                    "kb_per_idle_connection": round(
                        (with_idle - before) * 1024 / max(1, s.idle_connections), 1
                    ),
                },
            )
        )
        self.say(
            f"  {'rss':<12} {EVENTBUS:<15} before {before:.0f} MB, "
            f"{s.idle_connections} idle {with_idle:.0f} MB, "
            f"peak {peak:.0f} MB, growth after warm-up {growth:+.1f} MB, {load.rate:,.0f} ev/s"
        )
