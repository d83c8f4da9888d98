"""``python -m bench`` (``make bench``): run the scenarios, print and write the table.

    python -m bench                      # everything: about 10 minutes
    python -m bench --quick              # a smoke run: every scenario, tiny
    python -m bench --scenario write-64x1 --scenario latency --duration 10
    python -m bench --update-docs        # also refresh docs/benchmarks.rst and .png
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import chart, loadgen, machine, report, targets
from bench.results import ECHO, EVENTBUS, REDIS, Results
from bench.scenarios import ROUND_SCENARIOS, SCENARIOS, Runner, Settings
from bench.servers import EchoServer, EventBusServer, RedisServer, Server

RESULTS = Path(__file__).resolve().parent / "results"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="smoke mode: tiny runs, no real depth build")
    p.add_argument("--scenario", action="append", metavar="NAME",
                   help=f"run only these (repeat or comma-separate): {', '.join(SCENARIOS)}")
    p.add_argument("--duration", type=float, help="seconds measured per run (default 5; quick 0.3)")
    p.add_argument("--warmup", type=float, help="seconds of warm-up before each run is measured")
    p.add_argument("--rounds", type=int, help="interleaved rounds (default 3; quick 1)")
    p.add_argument("--rss-seconds", type=float, help="length of the RSS run (default 60)")
    p.add_argument("--depth-events", type=int, help="events in the deep stream (default 1,000,000)")
    p.add_argument("--no-redis", action="store_true", help="leave Redis out even when installed")
    p.add_argument("--update-docs", action="store_true",
                   help="write the table into docs/benchmarks.rst and the chart to docs/benchmarks.png")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory (databases, logs)")
    p.add_argument("--out", type=Path, default=RESULTS, help=f"where latest.md, .json, .png go ({RESULTS})")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = Settings()
    if args.quick:
        s = dataclasses.replace(
            s, quick=True, duration=0.3, warmup=0.1, rounds=1, consumers=4,
            depth_events=2000, depth_streams=2, depth_stream_events=500,
            idle_connections=50, rss_seconds=1.0,
        )
    overrides = {
        "duration": args.duration, "warmup": args.warmup, "rounds": args.rounds,
        "rss_seconds": args.rss_seconds, "depth_events": args.depth_events,
    }
    return dataclasses.replace(s, **{k: v for k, v in overrides.items() if v is not None})


def selected_scenarios(args: argparse.Namespace) -> list[str]:
    if not args.scenario:
        return list(SCENARIOS)
    names = [n.strip() for item in args.scenario for n in item.split(",") if n.strip()]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        raise SystemExit(f"unknown scenario {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    return names


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    settings = settings_from(args)
    selected = selected_scenarios(args)
    say = print
    loadgen.ensure_built()
    about = machine.describe()
    scratch = Path(tempfile.mkdtemp(prefix="eventbus-bench-"))
    servers: dict[str, Server] = {}
    results = Results()
    started = time.monotonic()
    try:
        say(f"scratch: {scratch}")
        servers[ECHO] = EchoServer(scratch).start()
        servers[EVENTBUS] = EventBusServer(scratch, scratch / "bench.db").start()
        if RedisServer.available() and not args.no_redis:
            servers[REDIS] = RedisServer(scratch).start()
        else:
            results.notes.append("Redis: not installed or left out; no peer figures")
        say("servers: " + ", ".join(f"{name} :{srv.port}" for name, srv in servers.items()))
        runner = Runner(settings, servers, scratch, results, say=say)
        runner.prepare()
        if any(s in selected for s in ROUND_SCENARIOS):
            for round_ in range(settings.rounds):
                say(f"round {round_ + 1} of {settings.rounds}")
                runner.run_round(round_, selected)
        if "depth" in selected:
            say("depth")
            runner.depth()
        if "rss" in selected:
            say("rss")
            runner.rss()
    finally:
        for srv in servers.values():
            srv.stop()
        if args.keep:
            say(f"kept {scratch}")
        else:
            shutil.rmtree(scratch, ignore_errors=True)
    load = os.getloadavg()
    about["load average at end"] = f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    about["bench wall time"] = f"{time.monotonic() - started:.0f} s"
    run_settings = {
        "mode": "quick (smoke)" if settings.quick else "full",
        "rounds": settings.rounds,
        "seconds per run": f"{settings.duration:g} (+{settings.warmup:g} warm-up)",
    }
    checks = targets.evaluate(results)
    png = args.out / "throughput.png"
    why_not = chart.plot(results, png, f"{about['cpus']} x {about['cpu']}, Python {about['python']}, "
                                       f"{about['date']}, commit {about['commit']}")
    if why_not:
        results.notes.append(f"chart: {why_not}")
    say("")
    say(report.render_text(results, checks, about, run_settings))
    latest = report.write(results, checks, about, run_settings, args.out)
    say(f"\nwritten: {latest}" + ("" if why_not else f", {png}"))
    if args.update_docs:
        report.update_docs(results, checks, about, run_settings, None if why_not else png)
        say(f"updated: {report.DOC}" + ("" if why_not else f", {report.DOC_CHART}"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
