"""Timing real transfers through the emulator (or directly): used by the tests and scripts/bench_channel.

A `Sink` accepts TCP connections and swallows bytes, stamping each read with the monotonic clock;
`timed_transfer` sends n bytes to a port and returns the time from the first send to the last byte
received by the sink (the sink and the sender share one clock, so the sink is in the same process,
or on the same machine: CLOCK_MONOTONIC is system-wide).
"""
from __future__ import annotations

import queue
import socket
import threading
import time
from dataclasses import dataclass, field

RECV_BUFFER = 1 << 20


@dataclass
class Received:
    nbytes: int
    t_first: float                  # monotonic time of the first byte's arrival
    t_last: float                   # ... and of the last byte's
    timeline: list[tuple[float, int]] = field(default_factory=list)   # (time, bytes so far), if asked

    def bytes_by(self, t: float) -> int:
        """Bytes received at or before time t (needs the timeline)."""
        got = 0
        for when, total in self.timeline:
            if when > t:
                break
            got = total
        return got


class Sink:
    """A TCP server (a thread per connection) that reads until EOF and reports a `Received` per
    connection on `results`. With `reply`, it sends those bytes back after the EOF, then closes."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, timeline: bool = False,
                 reply: bytes | None = None):
        self.timeline, self.reply = timeline, reply
        self.results: queue.Queue[Received] = queue.Queue()
        self._listener = socket.create_server((host, port), backlog=128)
        self.port = self._listener.getsockname()[1]
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._accepter = threading.Thread(target=self._accept_loop, name="sink-accept", daemon=True)
        self._accepter.start()

    def _accept_loop(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                return
            thread = threading.Thread(target=self._serve, args=(conn,), name="sink-conn", daemon=True)
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()

    def _serve(self, conn: socket.socket) -> None:
        buf = bytearray(RECV_BUFFER)
        total, first, last, timeline = 0, 0.0, 0.0, []
        with conn:
            try:
                while True:
                    n = conn.recv_into(buf)
                    now = time.monotonic()
                    if not n:
                        break
                    if not total:
                        first = now
                    total += n
                    last = now
                    if self.timeline:
                        timeline.append((now, total))
                if self.reply is not None:
                    conn.sendall(self.reply)
            except OSError:
                pass
        self.results.put(Received(total, first, last, timeline))

    def next_result(self, timeout_s: float = 60.0) -> Received:
        return self.results.get(timeout=timeout_s)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            try:
                self._listener.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            self._listener.close()
            self._accepter.join(5)
            for thread in self._threads:
                thread.join(5)

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def send_bytes(port: int, nbytes: int, host: str = "127.0.0.1", payload: bytes | None = None) -> float:
    """Connect, send nbytes (then half-close); returns the monotonic time just before the first send."""
    data = payload if payload is not None else bytes(nbytes)
    with socket.create_connection((host, port)) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        t0 = time.monotonic()
        sock.sendall(memoryview(data)[:nbytes])
        sock.shutdown(socket.SHUT_WR)
        # Wait for the far side to close, so the connection is fully over when we return.
        sock.settimeout(600)
        while sock.recv(65536):
            pass
    return t0


def timed_transfer(port: int, nbytes: int, sink: Sink, host: str = "127.0.0.1",
                   timeout_s: float = 120.0) -> tuple[float, Received]:
    """Send nbytes to host:port (which leads to `sink`); returns (seconds first send -> last byte, Received)."""
    t0 = send_bytes(port, nbytes, host)
    got = sink.next_result(timeout_s)
    if got.nbytes != nbytes:
        raise RuntimeError(f"sink received {got.nbytes} bytes, sent {nbytes}")
    return got.t_last - t0, got
