"""Where a server's time goes under one of the bench's loads (needs py-spy).

    pip install py-spy     # into the venv, for yourself: not a requirement
    python -m bench.profile --connections 64 --inflight 16 --seconds 10

Starts Event Bus on a scratch database, runs the write_event load with the
compiled generator while ``py-spy record`` samples every thread (on-CPU
only), and prints each busy thread's share of the samples and its top
functions, by self time and inclusive time.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter, defaultdict
from pathlib import Path

from bench import loadgen, wire
from bench.client import LineClient
from bench.servers import BIN, EventBusServer

_FRAME = re.compile(r"^(?P<fn>.*?) \((?P<file>[^()]*?)(?::\d+)?\)$")


def _short(frame: str) -> str:
    m = _FRAME.match(frame)
    if not m:
        return frame
    file = m.group("file")
    for marker in ("site-packages/", "lib/python3"):
        if marker in file:
            file = file.split(marker, 1)[1]
    return f"{m.group('fn')} ({file})"


def summarize(raw: str, top: int = 25) -> str:
    """Per thread: share of samples; top functions by self and inclusive samples."""
    per_thread: dict[str, Counter[str]] = defaultdict(Counter)
    inclusive: dict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for line in raw.splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = stack.split(";")
        thread = re.sub(r"^thread \(\d+\): ", "", frames[0]) if frames[0].startswith("thread") else "?"
        thread = re.sub(r"-\d+$", "", thread)
        calls = [_short(f) for f in frames[1:]] or ["?"]
        totals[thread] += count
        per_thread[thread][calls[-1]] += count
        for fn in set(calls):
            inclusive[thread][fn] += count
    all_samples = sum(totals.values()) or 1
    out = []
    for thread, n in totals.most_common():
        out.append(f"\n== {thread}: {n} samples, {100 * n / all_samples:.1f}% of on-CPU samples")
        out.append("-- self")
        for fn, c in per_thread[thread].most_common(top):
            out.append(f"{100 * c / n:6.1f}%  {fn}")
        out.append("-- inclusive")
        for fn, c in inclusive[thread].most_common(top):
            out.append(f"{100 * c / n:6.1f}%  {fn}")
    return "\n".join(out)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--connections", type=int, default=64)
    p.add_argument("--inflight", type=int, default=1)
    p.add_argument("--batch", type=int, default=0, help="write_events of this many (0: write_event)")
    p.add_argument("--seconds", type=float, default=10)
    p.add_argument("--rate", type=int, default=250, help="py-spy samples per second")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--raw", type=Path, help="also keep py-spy's raw output here")
    args = p.parse_args(argv)
    spy = shutil.which("py-spy", path=str(BIN)) or shutil.which("py-spy")
    if spy is None:
        print("py-spy is not installed: pip install py-spy", file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="eventbus-profile-"))
    server = EventBusServer(scratch, scratch / "profile.db").start()
    try:
        with LineClient(server.port) as client:
            client.call(wire.create_stream("bench"))
        request = wire.write_events("bench", args.batch) if args.batch else wire.write_event("bench")
        raw = scratch / "raw.txt"
        result: dict[str, loadgen.Load] = {}
        load = threading.Thread(target=lambda: result.update(load=loadgen.run(
            server.port, request, args.connections, args.inflight, args.seconds + 1, 1.0)))
        load.start()
        subprocess.run(
            [spy, "record", "--pid", str(server.pid), "--duration", str(int(args.seconds)),
             "--rate", str(args.rate), "--format", "raw", "--threads", "--nonblocking",
             "--output", str(raw)],
            check=True, capture_output=True,
        )
        load.join()
        text = raw.read_text()
        if args.raw:
            args.raw.write_text(text)
        got = result["load"]
        print(f"load: {args.connections} x {args.inflight}, {got.rate:,.0f} req/s, "
              f"p50 {got.p50_us / 1000:.2f} ms, p99 {got.p99_us / 1000:.2f} ms")
        print(summarize(text, args.top))
    finally:
        server.stop()
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
