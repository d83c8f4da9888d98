"""Issue 3's targets, checked against a run's medians and paired ratios."""

from __future__ import annotations

from dataclasses import dataclass

from bench.results import ECHO, EVENTBUS, Results

RSS_LIMIT_MB = 250.0
RSS_GROWTH_LIMIT_MB = 5.0


@dataclass
class Check:
    goal: str
    required: str
    measured: str
    ok: bool | None  # None: not measured in this run


def _fmt(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def evaluate(results: Results) -> list[Check]:
    checks: list[Check] = []

    def ratio_check(scenario: str, goal: str, floor: float) -> None:
        r = results.paired_ratio(scenario, EVENTBUS, ECHO, "events_per_s")
        checks.append(Check(goal, f">= {floor:.2f} x echo", _fmt(r, ".2f") + " x echo",
                            None if r is None else r >= floor))

    ratio_check("write-64x1", "durable write_event, 64 x 1", 0.40)
    ratio_check("write-64x16", "durable write_event, 64 x 16", 0.20)

    r = results.paired_ratio("latency", EVENTBUS, ECHO, "p50_us")
    checks.append(Check("1 connection: median latency", "<= 5 x echo", _fmt(r, ".2f") + " x echo",
                        None if r is None else r <= 5.0))

    batch = results.median_of("batch", EVENTBUS)
    checks.append(Check("write_events of 100, 8 connections", ">= 80,000 events/s",
                        _fmt(batch, ",.0f") + " events/s", None if batch is None else batch >= 80_000))

    consumed = results.median_of("consume", EVENTBUS)
    written = results.median_of("write-64x1", EVENTBUS)
    ok = None if consumed is None or written is None else consumed >= written
    checks.append(Check("consumption (8 x lease 100 + mark)", ">= the 64 x 1 write rate",
                        f"{_fmt(consumed, ',.0f')} vs {_fmt(written, ',.0f')} events/s", ok))

    r = results.paired_ratio("depth-write", "eventbus-deep", "eventbus-empty", "events_per_s")
    checks.append(Check("depth: write 64 x 1 vs empty database", ">= 0.80 x", _fmt(r, ".2f") + " x",
                        None if r is None else r >= 0.80))
    lease = results.median_of("depth-lease", "eventbus-deep", "p99_us")
    checks.append(Check("depth: leasing process_events (100) p99", "< 10 ms",
                        _fmt(None if lease is None else lease / 1000, ".2f") + " ms",
                        None if lease is None else lease < 10_000))

    rss = results.of("rss", EVENTBUS)
    if rss:
        extra = rss[-1].extra
        peak, growth = extra["rss_peak_mb"], extra["growth_mb"]
        checks.append(Check(f"RSS, {extra['idle_connections']:,} idle + 64 x 1", f"< {RSS_LIMIT_MB:.0f} MB",
                            f"{peak:.0f} MB peak", peak < RSS_LIMIT_MB))
        checks.append(Check(f"RSS growth over {extra['seconds']:.0f} s", f"< {RSS_GROWTH_LIMIT_MB:.0f} MB",
                            f"{growth:+.1f} MB", growth < RSS_GROWTH_LIMIT_MB))
    else:
        checks.append(Check("RSS, idle connections + 64 x 1", f"< {RSS_LIMIT_MB:.0f} MB", "n/a", None))
    return checks
