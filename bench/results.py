"""Samples of one run and their summary: medians over rounds, paired ratios."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from bench.stats import median, ratio

ECHO, EVENTBUS, REDIS = "echo", "eventbus", "redis"


@dataclass
class Sample:
    """One measurement: a scenario against one target in one round."""

    scenario: str
    target: str
    round: int
    rate: float  # requests (or round trips) per second
    events_per_s: float
    p50_us: float | None = None
    p99_us: float | None = None
    rss_mb: float | None = None
    errors: int = 0
    cpu_us: float | None = None  # server CPU time per request (user + system)
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class Summary:
    """The medians of one (scenario, target) over the rounds."""

    scenario: str
    target: str
    rounds: int
    rate: float | None
    events_per_s: float | None
    p50_us: float | None
    p99_us: float | None
    rss_mb: float | None
    errors: int
    cpu_us: float | None
    vs_echo: float | None = None  # median of per-round ratios (latency: p50 ratio)
    vs_redis: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


class Results:
    """Every sample of a run, in the order taken."""

    def __init__(self) -> None:
        self.samples: list[Sample] = []
        self.notes: list[str] = []

    def add(self, sample: Sample) -> Sample:
        self.samples.append(sample)
        return sample

    def of(self, scenario: str, target: str) -> list[Sample]:
        return [s for s in self.samples if s.scenario == scenario and s.target == target]

    def scenarios(self) -> list[str]:
        return list(dict.fromkeys(s.scenario for s in self.samples))

    def targets(self, scenario: str) -> list[str]:
        return list(dict.fromkeys(s.target for s in self.samples if s.scenario == scenario))

    def median_of(self, scenario: str, target: str, attr: str = "events_per_s") -> float | None:
        return median([getattr(s, attr) for s in self.of(scenario, target)])

    def paired_ratio(self, scenario: str, target: str, reference: str, attr: str) -> float | None:
        """Median over rounds of target/reference, each round's pair measured together."""
        by_round: dict[int, dict[str, float]] = defaultdict(dict)
        for s in self.samples:
            if s.scenario == scenario and s.target in (target, reference):
                by_round[s.round][s.target] = getattr(s, attr)
        ratios = [ratio(pair.get(target), pair.get(reference)) for pair in by_round.values()]
        return median([r for r in ratios if r is not None])

    def summary(self, scenario: str, target: str) -> Summary:
        samples = self.of(scenario, target)
        latency = scenario == "latency"
        attr = "p50_us" if latency else "events_per_s"
        extra: dict[str, Any] = {}
        for key in dict.fromkeys(k for s in samples for k in s.extra):
            values = [s.extra[key] for s in samples if isinstance(s.extra.get(key), (int, float))]
            extra[key] = median(values) if values else samples[-1].extra.get(key)
        return Summary(
            scenario=scenario,
            target=target,
            rounds=len(samples),
            rate=median([s.rate for s in samples]),
            events_per_s=median([s.events_per_s for s in samples]),
            p50_us=median([s.p50_us for s in samples]),
            p99_us=median([s.p99_us for s in samples]),
            rss_mb=median([s.rss_mb for s in samples]),
            errors=sum(s.errors for s in samples),
            cpu_us=median([s.cpu_us for s in samples]),
            vs_echo=None if target == ECHO else self.paired_ratio(scenario, target, ECHO, attr),
            vs_redis=None if target != EVENTBUS else self.paired_ratio(scenario, target, REDIS, attr),
            extra=extra,
        )

    def summaries(self) -> list[Summary]:
        return [self.summary(sc, t) for sc in self.scenarios() for t in self.targets(sc)]

    def to_json(self) -> dict[str, Any]:
        return {"samples": [asdict(s) for s in self.samples], "notes": self.notes}
