"""What the run ran on: a line for the report, since numbers mean little without it."""

from __future__ import annotations

import os
import platform
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import twisted
from bench.servers import RedisServer

ROOT = Path(__file__).resolve().parent.parent


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        argv = ["git", "describe", "--always", "--dirty", "--abbrev=7"]
        out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def describe() -> dict[str, str]:
    load = os.getloadavg()
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "commit": git_commit(),
        "cpus": str(os.cpu_count()),
        "cpu": cpu_model(),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "twisted": twisted.__version__,
        "sqlite": sqlite3.sqlite_version,
        "redis": RedisServer.version() if RedisServer.available() else "not installed",
        "load average at start": f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}",
    }
