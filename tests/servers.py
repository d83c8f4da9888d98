"""Real servers for tests: ``twistd -n eventbus`` in a subprocess."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
TWISTD = str(Path(sys.executable).parent / "twistd")
_PORT = re.compile(rb"BusFactory(?: \(TLS\))? starting on (\d+)")
_ADMIN_PORT = re.compile(rb"admin listening on http://[^:/]+:(\d+)/")

TEST_CLIENTS = {
    "go-client": {"client_id": "dope_go_client_id", "client_secret": "dope_go_client_secret"},
    "expenses-rest-api-client": {
        "client_id": "dope_expenses_rest_api_client_id",
        "client_secret": "dope_expenses_rest_api_client_secret",
    },
}


class ServerProcess:
    """One server process on a free port, its log and database in ``workdir``."""

    def __init__(
        self,
        workdir: Path,
        database: str | None = None,
        server: dict[str, Any] | None = None,
        auth: dict[str, Any] | None = None,
        listen: str = "tcp:0:interface=127.0.0.1",
        admin: str | None = None,
        extra_args: tuple[str, ...] = (),
    ) -> None:
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.database = database or f"sqlite:///{self.workdir / 'eventbus.db'}"
        self.config_path = self.workdir / "config.yaml"
        self.config_path.write_text(
            yaml.safe_dump({"auth": auth if auth is not None else TEST_CLIENTS, "server": server or {}})
        )
        self.listen = listen
        #: ``--admin`` endpoint (e.g. "tcp:0"); its port lands in admin_port.
        self.admin = admin
        self.extra_args = tuple(extra_args)
        self.admin_port: int | None = None
        self.log_path = self.workdir / "server.log"
        self.proc: subprocess.Popen | None = None
        self.port: int | None = None

    def start(self, timeout: float = 30.0) -> ServerProcess:
        log = open(self.log_path, "ab")
        offset = self.log_path.stat().st_size
        self.proc = subprocess.Popen(
            [
                TWISTD,
                "-n",
                "--pidfile=",
                "--logfile=-",
                "eventbus",
                "--config",
                str(self.config_path),
                "--listen",
                self.listen,
                "--database",
                self.database,
                *(["--admin", self.admin] if self.admin else []),
                *self.extra_args,
            ],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.log_path.read_bytes()[offset:]
            m = _PORT.search(text)
            admin = _ADMIN_PORT.search(text) if self.admin else None
            if m and (admin or not self.admin):
                self.port = int(m.group(1))
                self.admin_port = int(admin.group(1)) if admin else None
                return self
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"server exited with {self.proc.returncode}:\n{text.decode(errors='replace')}"
                )
            time.sleep(0.05)
        self.kill()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log_text()}")

    def writer_pid(self, timeout: float = 10.0) -> int:
        """The SQLite writer process (the server's one child): the process
        that writes the database file. Waited for: just after it is forked
        it is not yet the writer program."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while True:
            writers = [pid for pid in children(self.proc.pid) if _runs_writer(pid)]
            if len(writers) == 1 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert len(writers) == 1, f"expected one writer process, found {writers}"
        return writers[0]

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int:
        """SIGTERM and wait: the graceful stop."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        """SIGKILL: the crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self.terminate()
            except subprocess.TimeoutExpired:
                self.kill()


def alive(pid: int) -> bool:
    """Is ``pid`` a live process (not gone, not a zombie)?"""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def children(pid: int) -> list[int]:
    """The live child processes of ``pid``."""
    out: list[int] = []
    try:
        for task in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{task}/children") as f:
                out += [int(c) for c in f.read().split()]
    except FileNotFoundError:
        return []
    return [c for c in out if alive(c)]


def _runs_writer(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"eventbus.storage.writer_process" in f.read()
    except FileNotFoundError:
        return False
