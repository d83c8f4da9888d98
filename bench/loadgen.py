"""The compiled load generator (loadgen.c): building it and running it.

``make bench`` compiles it; :func:`ensure_built` compiles it again when the
binary is missing or older than its source (a fresh clone, the smoke test).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
SOURCE = HERE / "loadgen.c"
BINARY = HERE / "results" / "bin" / "loadgen"


@dataclass
class Load:
    """What one run of the generator measured."""

    connections: int
    inflight: int
    seconds: float
    responses: int  # answered in the measured window
    sent: int  # requests sent in all, warm-up included (all answered, unless it failed)
    errors: int
    rate: float  # responses per second
    p50_us: float
    p90_us: float
    p99_us: float
    max_us: float
    first_error: str


def ensure_built() -> Path:
    """The generator's binary, compiled from source if needed."""
    if BINARY.exists() and BINARY.stat().st_mtime >= SOURCE.stat().st_mtime:
        return BINARY
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("a C compiler (cc or gcc) is needed to build bench/loadgen.c")
    BINARY.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [cc, "-O2", "-Wall", "-o", str(BINARY), str(SOURCE), "-lpthread"], check=True
    )
    return BINARY


def run(
    port: int,
    request: bytes,
    connections: int,
    inflight: int,
    duration: float,
    warmup: float,
    resp: bool = False,
    threads: int = 1,
) -> Load:
    """Keep ``connections`` x ``inflight`` copies of ``request`` going for ``duration`` s."""
    binary = ensure_built()
    with tempfile.NamedTemporaryFile(prefix="bench-request-", suffix=".bin") as f:
        f.write(request)
        f.flush()
        argv = [
            str(binary), "-p", str(port), "-c", str(connections), "-k", str(inflight),
            "-d", str(duration), "-w", str(warmup), "-t", str(threads), "-f", f.name,
        ]
        if resp:
            argv.append("-r")
        timeout = 60 + warmup + duration + connections * 0.01
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if not done.stdout.strip():
        raise RuntimeError(f"loadgen failed ({done.returncode}): {done.stderr.strip()}")
    out = json.loads(done.stdout)
    if out["failure"]:
        raise RuntimeError(f"loadgen: {out['failure']}")
    return Load(
        connections=out["connections"],
        inflight=out["inflight"],
        seconds=out["seconds"],
        responses=out["responses"],
        sent=out["sent"],
        errors=out["errors"],
        rate=out["rate"],
        p50_us=out["p50_us"],
        p90_us=out["p90_us"],
        p99_us=out["p99_us"],
        max_us=out["max_us"],
        first_error=out["first_error"],
    )
