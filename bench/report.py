"""The report: the results table, the targets, the machine; printed and written.

``bench/results/latest.md`` (and ``latest.json`` with every sample) is
written on every run; with ``--update-docs`` the generated part of
``docs/benchmarks.rst`` and ``docs/benchmarks.png`` are replaced too.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from bench.results import ECHO, EVENTBUS, Results, Summary
from bench.scenarios import SCENARIOS
from bench.tables import Table
from bench.targets import Check

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "benchmarks.rst"
DOC_CHART = ROOT / "docs" / "benchmarks.png"
BEGIN, END = ".. begin generated (make bench ARGS=--update-docs)", ".. end generated"

#: Rows of the table: (scenario key, label shown).
ROW_ORDER = (
    ("write-64x1", "write 64x1"),
    ("write-64x16", "write 64x16"),
    ("latency", "latency 1x1"),
    ("batch", "batch 8x100"),
    ("consume", "consume 8"),
    ("scale-1", "write 1x1"),
    ("scale-4", "write 4x1"),
    ("scale-16", "write 16x1"),
    ("depth-write", "depth write 64x1"),
    ("depth-lease", "depth lease 1x100"),
    ("rss", "rss idle+64x1"),
)
HEADERS = [
    "Scenario", "Target", "Req/s", "Events/s", "p50 ms", "p99 ms", "vs echo", "vs Redis", "CPU us/req",
    "RSS MB", "Notes",
]


def _n(value: float | None, spec: str = ",.0f") -> str:
    return "" if value is None else format(value, spec)


def _ms(us: float | None) -> str:
    return "" if us is None else f"{us / 1000:.2f}"


def _notes(s: Summary, results: Results) -> str:
    notes = []
    if s.scenario == "latency" and s.vs_echo is not None:
        notes.append("vs echo: p50 latency ratio")
    if s.scenario == "consume":
        notes.append("p50/p99: lease (XREADGROUP)")
        if s.extra.get("drained"):
            notes.append("drained the stream early")
    if s.scenario == "depth-write" and s.target == "eventbus-deep":
        r = results.paired_ratio("depth-write", "eventbus-deep", "eventbus-empty", "events_per_s")
        if r is not None:
            notes.append(f"{r:.2f} x empty")
    if s.scenario == "depth-lease":
        notes.append(f"p50/p99: lease; {s.extra.get('leases', 0):,.0f} leases")
    if s.scenario == "rss":
        e = s.extra
        notes.append(
            f"{e['idle_connections']:,} idle; before {e['rss_before_mb']:.0f}, "
            f"with idle {e['rss_idle_mb']:.0f}, "
            f"growth {e['growth_mb']:+.1f} MB over {e['seconds']:.0f} s; "
            f"{e['idle_still_open']} idle still open"
        )
    if s.errors:
        notes.append(f"{s.errors} ERRORS")
    return "; ".join(notes)


def results_table(results: Results) -> Table:
    summaries = {(s.scenario, s.target): s for s in results.summaries()}
    rows = []
    for key, label in ROW_ORDER:
        for (scenario, target), s in summaries.items():
            if scenario != key:
                continue
            rows.append([
                label,
                target,
                _n(s.rate),
                _n(s.events_per_s),
                _ms(s.p50_us),
                _ms(s.p99_us),
                "1.00" if target == ECHO else _n(s.vs_echo, ".2f"),
                _n(s.vs_redis, ".2f") if target == EVENTBUS else "",
                _n(s.cpu_us, ",.1f"),
                _n(s.rss_mb),
                _notes(s, results),
            ])
    return Table(HEADERS, rows, right=frozenset({2, 3, 4, 5, 6, 7, 8, 9}))


def targets_table(checks: list[Check]) -> Table:
    verdict = {True: "PASS", False: "FAIL", None: "not run"}
    return Table(["Target (issue 3)", "Required", "Measured", "Holds"],
                 [[c.goal, c.required, c.measured, verdict[c.ok]] for c in checks])


def machine_table(machine: dict[str, str], settings: dict[str, Any]) -> Table:
    rows = [[k, v] for k, v in machine.items()]
    rows += [[k, str(v)] for k, v in settings.items()]
    return Table(["Machine and run", ""], rows)


def legend() -> list[str]:
    return [f"{name}: {text}" for name, text in SCENARIOS.items()]


EXPLAIN = (
    "Medians over the interleaved rounds; 'vs echo' and 'vs Redis' are medians of per-round ratios "
    "(each pair measured back to back). Rates are requests (round trips) per second and events per "
    "second; write_events carries 100 events per request, consume counts events leased and marked. "
    "Latencies are per request, measured by the load generator. CPU us/req and RSS are the server's, "
    "its child processes included (Event Bus's SQLite writer): CPU time (user + system, all threads) per "
    "request, far less disturbed by a busy machine than rates."
)


def render_text(results: Results, checks: list[Check], machine: dict[str, str], settings: dict) -> str:
    parts = [
        "Event Bus benchmark",
        machine_table(machine, settings).text(),
        "",
        results_table(results).text(),
        "",
        targets_table(checks).text(),
        "",
        EXPLAIN,
        *results.notes,
    ]
    return "\n".join(parts)


def render_markdown(results: Results, checks: list[Check], machine: dict[str, str], settings: dict) -> str:
    parts = [
        "# Event Bus benchmark",
        "",
        machine_table(machine, settings).markdown(),
        "",
        "## Results",
        "",
        results_table(results).markdown(),
        "",
        EXPLAIN,
        "",
        "## Targets",
        "",
        targets_table(checks).markdown(),
        "",
        "## Scenarios",
        "",
        *(f"- {line}" for line in legend()),
        "",
        *(f"- {note}" for note in results.notes),
        "",
    ]
    return "\n".join(parts)


def render_rst(results: Results, checks: list[Check], machine: dict[str, str], settings: dict) -> str:
    parts = [
        BEGIN,
        "",
        "Machine and run",
        "---------------",
        "",
        *(f"- {k}: {v}" for k, v in [*machine.items(), *settings.items()]),
        "",
        "Results",
        "-------",
        "",
        results_table(results).rst(),
        "",
        EXPLAIN,
        "",
        "Targets",
        "-------",
        "",
        targets_table(checks).rst(),
        "",
        *(f"- {note}" for note in results.notes),
        "",
        END,
    ]
    return "\n".join(parts)


def write(results: Results, checks: list[Check], machine: dict[str, str], settings: dict,
          out_dir: Path) -> Path:
    out_dir.mkdir(parents=True, exist_ok=True)
    latest = out_dir / "latest.md"
    latest.write_text(render_markdown(results, checks, machine, settings))
    (out_dir / "latest.json").write_text(
        json.dumps({"machine": machine, "settings": settings, **results.to_json()}, indent=1)
    )
    return latest


def update_docs(results: Results, checks: list[Check], machine: dict[str, str], settings: dict,
                chart: Path | None) -> None:
    """Replace the generated section of docs/benchmarks.rst, and the chart."""
    generated = render_rst(results, checks, machine, settings)
    text = DOC.read_text() if DOC.exists() else ""
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if pattern.search(text):
        text = pattern.sub(lambda _: generated, text)
    else:
        text = text.rstrip() + "\n\n" + generated + "\n"
    DOC.write_text(text)
    if chart is not None and chart.exists():
        shutil.copyfile(chart, DOC_CHART)
