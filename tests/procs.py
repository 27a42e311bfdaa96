"""Starting and stopping real coinfer processes in tests.

Every process a test starts listens on 127.0.0.1 on a free port and is stopped (SIGTERM, then SIGKILL)
when the `with` block ends, whatever the test's outcome.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on 127.0.0.1:{port} after {timeout_s}s")


class CoinferProcess:
    """`coinfer ARGS...` as a child process; a context manager that always stops it.

    stdout/stderr go to files under `log_dir` so a failing test can show them.
    """

    def __init__(self, args: list[str], port: int | None, log_dir: Path, name: str,
                 ready_timeout_s: float = 120.0, env: dict | None = None):
        self.args, self.port, self.name = args, port, name
        self.ready_timeout_s = ready_timeout_s
        self.log_path = Path(log_dir) / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "CoinferProcess":
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen([sys.executable, "-m", "coinfer", *self.args], stdout=self._log,
                                     stderr=subprocess.STDOUT, env=self.env)
        if self.port is not None:
            try:
                wait_for_port(self.port, self.ready_timeout_s, self.proc)
            except Exception:
                self.stop()
                raise RuntimeError(f"{self.name} did not start:\n{self.log()}")
        return self

    def log(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, grace_s: float = 10.0) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()
        return self.proc.returncode

    def __exit__(self, *exc) -> None:
        self.stop()
