"""`make bench` works: its quick mode runs every scenario and prints the table.

No timing is asserted here: benchmarks are not tests (docs/benchmarks.rst).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("cc") is None and shutil.which("gcc") is None,
    reason="the bench's load generator needs a C compiler",
)


def test_quick_bench_prints_every_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    out = done.stdout
    table = out[out.index("Scenario  ") :]
    for label in (
        "write 64x1",
        "write 64x16",
        "latency 1x1",
        "batch 8x100",
        "consume 8",
        "write 1x1",
        "write 4x1",
        "write 16x1",
        "depth write 64x1",
        "depth lease 1x100",
        "rss idle+64x1",
    ):
        assert label in table, f"{label!r} missing from:\n{table}"
    for target in ("echo", "eventbus"):
        assert f"  {target}  " in table
    assert "Target (issue 3)" in out
    assert "Scenario" in (tmp_path / "latest.md").read_text()
