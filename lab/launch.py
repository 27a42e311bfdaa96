"""Starting coinfer services as child processes and learning the address they bound.

A service started with port 0 prints 'listening on HOST:PORT' on stdout once it serves (and, for
other endpoints, e.g. 'control on HOST:PORT'); the parent reads those lines, so no port is ever guessed
(and none can be taken by someone else in between). The demo, the benchmarks and the tests all start
processes with this one launcher.
"""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

# "[coinfer NAME: ]ENDPOINT on HOST:PORT[ anything]"
_ENDPOINT = re.compile(r"^(?:coinfer [\w-]+: )?(\w+) on (\S+:\d+)(?:\s|$)")


class ServiceProcess:
    """`python -m coinfer ARGS` as a child; `address` is set once it listens. Always stop() it."""

    def __init__(self, args: list[str], name: str, ready_timeout_s: float = 180.0, stderr=None,
                 expect: tuple[str, ...] = ("listening",), env: dict | None = None):
        self.name = name
        self.endpoints: dict[str, str] = {}
        self.lines: list[str] = []  # everything it printed on stdout (and stderr, given stderr=STDOUT)
        self.proc = subprocess.Popen([sys.executable, "-m", "coinfer", *args], stdout=subprocess.PIPE,
                                     stderr=stderr, text=True,
                                     env={**(env if env is not None else os.environ), "PYTHONUNBUFFERED": "1"})
        self.address = self._wait_for_endpoints(expect, ready_timeout_s)

    def _wait_for_endpoints(self, expect: tuple[str, ...], timeout_s: float) -> str:
        done = threading.Event()

        def read() -> None:
            for line in self.proc.stdout:
                self.lines.append(line)
                match = _ENDPOINT.match(line)
                if match:
                    self.endpoints.setdefault(match.group(1), match.group(2))
                    if all(name in self.endpoints for name in expect):
                        done.set()
            done.set()  # stdout closed: the process ended

        threading.Thread(target=read, name=f"{self.name}-stdout", daemon=True).start()
        deadline = time.monotonic() + timeout_s
        while not done.wait(0.1):
            if time.monotonic() > deadline:
                self.stop()
                raise TimeoutError(f"{self.name} did not start listening within {timeout_s:.0f} s")
        if not all(name in self.endpoints for name in expect):
            code = self.proc.wait()
            raise RuntimeError(f"{self.name} exited with status {code} before listening")
        return self.endpoints[expect[0]]

    def output(self) -> str:
        """What the process has printed so far."""
        return "".join(self.lines)

    def wait_for_output(self, text: str, timeout_s: float = 30.0) -> None:
        deadline = time.monotonic() + timeout_s
        while text not in self.output():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}:\n{self.output()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"no {text!r} from {self.name} in {timeout_s:.0f} s:\n{self.output()}")
            time.sleep(0.05)

    @property
    def port(self) -> int:
        return int(self.address.rpartition(":")[2])

    def stop(self, grace_s: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def __enter__(self) -> "ServiceProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def free_port() -> int:
    """A port free on 127.0.0.1 now (for tests of fixed-port options; services otherwise bind port 0)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout_s: float, proc: subprocess.Popen | None = None) -> None:
    """Until something accepts on 127.0.0.1:`port` (RuntimeError if `proc` exits first)."""
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
