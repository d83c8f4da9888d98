"""Compare versions of the server under the same loads, interleaved.

    python -m bench.compare HEAD~3 HEAD worktree --load 64x1 --load 64x16 --load 8x1x100

Each version (a git commit, or ``worktree`` for the files as they are) gets
its own server on its own scratch database, its ``eventbus`` package put
first on the path; every round runs each load against each version, in an
order that rotates, and the medians follow with the ratio to the first
version and the CPU time per request (the figure a busy machine disturbs
least). Loads are CONNECTIONSxINFLIGHT, or CONNECTIONSxINFLIGHTxBATCH for
``write_events`` of BATCH events.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from bench import loadgen, wire
from bench.client import LineClient
from bench.servers import ROOT, EventBusServer


def _tree(ref: str, into: Path) -> Path:
    """A directory holding the ``eventbus`` package of ``ref``."""
    if ref == "worktree":
        return ROOT
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "archive", ref, "eventbus"], cwd=ROOT, capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into


def _load(text: str) -> tuple[int, int, int]:
    parts = [int(p) for p in text.lower().split("x")]
    if len(parts) not in (2, 3):
        raise argparse.ArgumentTypeError(f"{text!r}: CONNECTIONSxINFLIGHT[xBATCH]")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else 0


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.compare", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("refs", nargs="+", help="git commits, or 'worktree'")
    p.add_argument("--load", type=_load, action="append", help="e.g. 64x1, 64x16, 8x1x100")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=4)
    args = p.parse_args(argv)
    loads = args.load or [(64, 1, 0), (64, 16, 0)]
    scratch = Path(tempfile.mkdtemp(prefix="eventbus-compare-"))
    servers: dict[str, EventBusServer] = {}
    samples: dict[tuple, dict[str, list[tuple[float, float, float]]]] = {}
    try:
        for i, ref in enumerate(args.refs):
            work = scratch / f"v{i}"
            tree = _tree(ref, work / "tree")
            server = EventBusServer(work, work / "bench.db", label=f"v{i}")
            server.env = {"PYTHONPATH": str(tree)}
            servers[ref] = server.start()
            with LineClient(server.port) as client:
                client.call(wire.create_stream("bench"))
                client.call(wire.create_stream("batch"))
        refs = list(servers)
        for round_ in range(args.rounds):
            order = refs[round_ % len(refs):] + refs[: round_ % len(refs)]
            for conns, inflight, batch in loads:
                request = wire.write_events("batch", batch) if batch else wire.write_event("bench")
                for ref in order:
                    server = servers[ref]
                    cpu = server.cpu_seconds()
                    got = loadgen.run(server.port, request, conns, inflight, args.seconds, 1.0)
                    cpu_us = (server.cpu_seconds() - cpu) * 1e6 / max(1, got.sent)
                    rate = got.rate * (batch or 1)
                    samples.setdefault((conns, inflight, batch), {}).setdefault(ref, []).append(
                        (rate, got.p50_us, cpu_us)
                    )
                    print(f"round {round_ + 1} {conns}x{inflight}{f'x{batch}' if batch else ''} {ref:>12}: "
                          f"{rate:>10,.0f} ev/s  p50 {got.p50_us / 1000:6.2f} ms  cpu {cpu_us:7.1f} us/req",
                          flush=True)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    print("\nmedians (ratio to the first version)")
    for (conns, inflight, batch), by_ref in samples.items():
        base = statistics.median(s[0] for s in by_ref[args.refs[0]])
        label = f"{conns}x{inflight}{f'x{batch}' if batch else ''}"
        cells = []
        for ref, values in by_ref.items():
            rate = statistics.median(v[0] for v in values)
            cells.append(f"{ref}: {rate:,.0f} ev/s (x{rate / base:.2f}), "
                         f"p50 {statistics.median(v[1] for v in values) / 1000:.2f} ms, "
                         f"cpu {statistics.median(v[2] for v in values):.1f} us/req")
        print(f"{label:>9}  " + "  |  ".join(cells))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
