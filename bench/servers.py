"""The servers under test, each a subprocess on a free port of 127.0.0.1.

Event Bus is started as an operator would (``twistd -n eventbus``) on a
scratch database; the echo server is ``bench/echo_server.py``; Redis is
``redis-server`` with every write fsync'd (``appendfsync always``), when it
is installed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
AUTH = {"client_id": "dope_go_client_id", "client_secret": "dope_go_client_secret"}
_EVENTBUS_PORT = re.compile(rb"BusFactory starting on (\d+)")
_ECHO_PORT = re.compile(rb"echo listening on (\d+)")


def free_port() -> int:
    """A TCP port of 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def family(pid: int) -> list[int]:
    """A process and its children: a server is all of them (Event Bus's
    SQLite writer is a child process)."""
    pids = [pid]
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                pids += [int(c) for c in f.read().split()]
    except OSError:
        pass
    return pids


def rss_mb(pid: int) -> float:
    """Resident set size of a process and its children, in MB (0 when gone)."""
    total = 0.0
    for member in family(pid):
        try:
            with open(f"/proc/{member}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) a process and its children have used so
    far, in seconds."""
    ticks = 0
    for member in family(pid):
        try:
            with open(f"/proc/{member}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            ticks += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return ticks / os.sysconf("SC_CLK_TCK")


class Server:
    """A server subprocess: its name, port, pid and log."""

    name = "server"

    def __init__(self, workdir: Path) -> None:
        #: Extra environment for the process (bench.compare: PYTHONPATH).
        self.env: dict[str, str] = {}
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / f"{self.name}.log"
        self.proc: subprocess.Popen | None = None
        self.port = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_mb(self) -> float:
        return rss_mb(self.pid)

    def cpu_seconds(self) -> float:
        return cpu_seconds(self.pid)

    def _spawn(self, argv: list[str], cwd: Path) -> None:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                argv,
                cwd=cwd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "PYTHONUNBUFFERED": "1", **self.env},
            )

    def _wait_for_port(self, pattern: re.Pattern[bytes], timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = pattern.search(self.log_path.read_bytes())
            if m:
                self.port = int(m.group(1))
                return
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.name} did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")

    def stop(self, timeout: float = 30.0) -> None:
        """SIGTERM (a graceful stop), then SIGKILL if it does not end."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


class EventBusServer(Server):
    name = "eventbus"

    def __init__(self, workdir: Path, database: Path, label: str = "eventbus") -> None:
        self.name = label
        super().__init__(workdir)
        self.database = database
        self.config_path = workdir / f"{label}.yaml"
        config = {"logger": {"level": "info"}, "auth": {"bench": AUTH}}
        self.config_path.write_text(yaml.safe_dump(config))

    def start(self) -> EventBusServer:
        self._spawn(
            [
                str(BIN / "twistd"), "-n", "--pidfile=", "--logfile=-", "eventbus",
                "--listen", "tcp:0:interface=127.0.0.1",
                "--database", f"sqlite:///{self.database}",
                "--config", str(self.config_path),
            ],
            cwd=self.workdir,
        )
        self._wait_for_port(_EVENTBUS_PORT)
        return self


class EchoServer(Server):
    name = "echo"

    def start(self) -> EchoServer:
        self._spawn([sys.executable, str(ROOT / "bench" / "echo_server.py")], cwd=self.workdir)
        self._wait_for_port(_ECHO_PORT)
        return self


class RedisServer(Server):
    name = "redis"

    @staticmethod
    def available() -> bool:
        return shutil.which("redis-server") is not None

    @staticmethod
    def version() -> str:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True).stdout
        m = re.search(r"v=(\S+)", out)
        return m.group(1) if m else out.strip()

    def start(self) -> RedisServer:
        self.port = free_port()
        data = self.workdir / "redis-data"
        data.mkdir(exist_ok=True)
        self._spawn(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--appendonly", "yes", "--appendfsync", "always",
                "--save", "", "--dir", str(data),
            ],
            cwd=self.workdir,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        return self
            except OSError:
                pass
            if self.proc is not None and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis did not start:\n{self.log_path.read_text(errors='replace')[-3000:]}")
