"""The TCP proxy: every accepted connection is joined to a new connection to the upstream server,
and each direction's bytes pass through a shared link (the rate) and a delay line (propagation).

Per direction, three small tasks on non-blocking sockets:
  reader  reads ahead and stamps each chunk with its arrival time (so a busy link does not make the
          arrival times late), up to QUEUE_HIGH_BYTES, then waits (backpressure);
  sender  takes one quantum at a time through the link and writes it at the quantum's ideal end;
  delay   (only with a delay) holds each quantum until end + delay, then writes it; at most
          DELAY_LINE_BYTES wait there, which at an unlimited rate caps throughput at 32 MiB / delay.
When the link is unlimited and there is no delay, the reader moves the bytes itself with splice(2)
through a pipe (no copy into Python), which is what the overhead benchmark measures; it switches
back to the queue as soon as the link is limited again, never reordering bytes.

Closing: an EOF from one side is passed on as a half-close (shutdown of writes) once every byte
before it has been delivered, while the other direction keeps flowing; when both directions have
ended, both sockets are closed. A reset or a failed write on either side closes both.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import logging
import math
import os
import socket
from collections import deque

from coinfer.channel.link import SharedLink

log = logging.getLogger(__name__)

READ_SIZE = 256 << 10
QUEUE_HIGH_BYTES = 1 << 20        # stop reading a side when this much waits for the link
QUEUE_LOW_BYTES = 256 << 10       # resume below this
DELAY_LINE_BYTES = 32 << 20       # at most this much in flight in a delay line (a receiver that
                                  # stops reading, or an unlimited rate, must not grow it forever)
PIPE_BYTES = 1 << 20
SPLICE_OK = hasattr(os, "splice")
_SPLICE_FLAGS = (os.SPLICE_F_MOVE | os.SPLICE_F_NONBLOCK) if SPLICE_OK else 0
_EOF = None


class _Direction:
    """src -> dst through one link and, with a delay, the delay line."""

    def __init__(self, conn: "_Connection", src: socket.socket, dst: socket.socket, link: SharedLink,
                 delay_s: float, add_bytes):
        self.conn, self.src, self.dst, self.link, self.delay_s = conn, src, dst, link, delay_s
        self.add_bytes = add_bytes
        self.loop = conn.loop
        self.queue: deque = deque()          # (t_arrival, memoryview), finally (t, _EOF)
        self.queued = 0
        self.data_ready = asyncio.Event()
        self.space = asyncio.Event()
        self.space.set()
        self.sender_busy = False
        self.delayed: deque = deque()        # (due, memoryview | _EOF)
        self.delayed_bytes = 0
        self.delayed_ready = asyncio.Event()
        self.delayed_space = asyncio.Event()
        self.delayed_space.set()
        self.last_finish = -math.inf
        self.done = False                    # EOF passed on to dst
        self.pipe: tuple[int, int] | None = None

    def coroutines(self) -> list:
        return [self._read_loop(), self._send_loop()] + ([self._delay_loop()] if self.delay_s > 0 else [])

    def close(self) -> None:
        if self.pipe is not None:
            for fd in self.pipe:
                os.close(fd)
            self.pipe = None

    # -- reader -----------------------------------------------------------------------------------
    def _can_splice(self) -> bool:
        return (SPLICE_OK and self.delay_s == 0 and self.link.unlimited
                and not self.queue and not self.sender_busy)

    async def _read_loop(self) -> None:
        while True:
            if self._can_splice():
                try:
                    moved = os.splice(self.src.fileno(), self._pipe()[1], PIPE_BYTES, flags=_SPLICE_FLAGS)
                except BlockingIOError:
                    await self._ready(self.src, write=False)
                    continue                  # the link may have changed while we waited
                if not moved:
                    break
                await self._drain_pipe(moved)
                self.add_bytes(moved)
                continue
            while self.queued >= QUEUE_HIGH_BYTES:
                self.space.clear()
                await self.space.wait()
            data = await self.loop.sock_recv(self.src, READ_SIZE)
            if not data:
                break
            self.queue.append((self.loop.time(), memoryview(data)))
            self.queued += len(data)
            self.data_ready.set()
        self.queue.append((self.loop.time(), _EOF))
        self.data_ready.set()

    def _pipe(self) -> tuple[int, int]:
        if self.pipe is None:
            self.pipe = os.pipe()
            try:
                fcntl.fcntl(self.pipe[1], fcntl.F_SETPIPE_SZ, PIPE_BYTES)
            except OSError:
                pass                          # a smaller pipe only means more system calls
        return self.pipe

    async def _drain_pipe(self, nbytes: int) -> None:
        """Move the nbytes in the pipe to dst (zero-copy)."""
        while nbytes:
            try:
                nbytes -= os.splice(self.pipe[0], self.dst.fileno(), nbytes, flags=_SPLICE_FLAGS)
            except BlockingIOError:
                await self._ready(self.dst, write=True)

    async def _ready(self, sock: socket.socket, write: bool) -> None:
        future = self.loop.create_future()
        fd = sock.fileno()
        add, remove = ((self.loop.add_writer, self.loop.remove_writer) if write
                       else (self.loop.add_reader, self.loop.remove_reader))
        add(fd, lambda: future.done() or future.set_result(None))
        try:
            await future
        finally:
            remove(fd)

    # -- sender -----------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
        while True:
            while not self.queue:
                self.data_ready.clear()
                await self.data_ready.wait()
            t_arrival, view = self.queue[0]
            if view is _EOF:
                break
            while self.delayed_bytes >= DELAY_LINE_BYTES:
                self.delayed_space.clear()
                await self.delayed_space.wait()
            self.sender_busy = True
            n = len(view) if self.link.unlimited else min(len(view), self.link.quantum)
            finish = await self.link.transmit(n, t_arrival)
            if n < len(view):
                self.queue[0] = (t_arrival, view[n:])
            else:
                self.queue.popleft()
            self.queued -= n
            if self.queued < QUEUE_LOW_BYTES:
                self.space.set()
            self.last_finish = finish
            if self.delay_s > 0:
                self.delayed.append((finish + self.delay_s, view[:n]))
                self.delayed_bytes += n
                self.delayed_ready.set()
            else:
                await self.loop.sock_sendall(self.dst, view[:n])
                self.add_bytes(n)
            self.sender_busy = False
        if self.delay_s > 0:
            self.delayed.append((max(self.last_finish, self.loop.time()) + self.delay_s, _EOF))
            self.delayed_ready.set()
        else:
            self._pass_eof()

    async def _delay_loop(self) -> None:
        while True:
            while not self.delayed:
                self.delayed_ready.clear()
                await self.delayed_ready.wait()
            due, piece = self.delayed.popleft()
            wait = due - self.loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            if piece is _EOF:
                self._pass_eof()
                return
            await self.loop.sock_sendall(self.dst, piece)
            self.add_bytes(len(piece))
            self.delayed_bytes -= len(piece)
            if self.delayed_bytes < DELAY_LINE_BYTES:
                self.delayed_space.set()

    def _pass_eof(self) -> None:
        try:
            self.dst.shutdown(socket.SHUT_WR)
        except OSError as exc:
            if exc.errno != errno.ENOTCONN:   # the peer may already be gone: nothing to tell it
                raise
        self.done = True
        self.conn.direction_done()


class _Connection:
    def __init__(self, proxy: "Proxy", client: socket.socket):
        self.proxy, self.client = proxy, client
        self.loop = proxy.loop
        self.upstream: socket.socket | None = None
        self.directions: list[_Direction] = []
        self.over = asyncio.Event()           # both directions ended, or one failed

    async def run(self) -> None:
        tasks: list[asyncio.Task] = []
        self.proxy.active.add(self)
        self.proxy.connections_total += 1
        try:
            try:
                self.upstream = await self.proxy.connect_upstream()
            except OSError as exc:
                log.info("upstream %s:%s unreachable: %s", self.proxy.upstream_host, self.proxy.upstream_port, exc)
                self.proxy.connections_failed += 1
                return
            self.directions = [
                _Direction(self, self.client, self.upstream, self.proxy.uplink, self.proxy.delay_s,
                           self.proxy.add_up),
                _Direction(self, self.upstream, self.client, self.proxy.downlink, self.proxy.delay_s,
                           self.proxy.add_down)]
            tasks = [self.loop.create_task(self._guard(c)) for d in self.directions for c in d.coroutines()]
            await self.over.wait()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            for direction in self.directions:
                direction.close()
            for sock in (self.client, self.upstream):
                if sock is not None:
                    sock.close()
            self.proxy.active.discard(self)

    async def _guard(self, coroutine) -> None:
        try:
            await coroutine
        except asyncio.CancelledError:
            raise
        except OSError as exc:                # reset, broken pipe...: the connection is over
            log.debug("connection closed on error: %s", exc)
            self.over.set()
        except Exception:                     # a bug: still close the connection rather than hang it
            log.exception("channel connection failed")
            self.over.set()

    def direction_done(self) -> None:
        if all(d.done for d in self.directions):
            self.over.set()


class Proxy:
    """The listening socket and its connections; `await start()` and `await close()` on one loop."""

    def __init__(self, upstream_host: str, upstream_port: int, uplink: SharedLink, downlink: SharedLink,
                 delay_s: float = 0.0):
        self.loop = asyncio.get_running_loop()
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.uplink, self.downlink, self.delay_s = uplink, downlink, delay_s
        self.bytes_up = 0
        self.bytes_down = 0
        self.connections_total = 0
        self.connections_failed = 0
        self.active: set[_Connection] = set()
        self._upstream_addrs: list = []
        self._listener: socket.socket | None = None
        self._accept_task: asyncio.Task | None = None
        self._tasks: set[asyncio.Task] = set()

    def add_up(self, n: int) -> None:
        self.bytes_up += n

    def add_down(self, n: int) -> None:
        self.bytes_down += n

    async def start(self, host: str, port: int) -> tuple[str, int]:
        # Resolve the upstream once, here: no resolver thread per connection.
        self._upstream_addrs = [(family, addr) for family, _, _, _, addr in
                                socket.getaddrinfo(self.upstream_host, self.upstream_port, type=socket.SOCK_STREAM)]
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._listener = socket.create_server((host, port), family=family, backlog=1024)
        self._listener.setblocking(False)
        self._accept_task = self.loop.create_task(self._accept_loop())
        return self._listener.getsockname()[:2]

    async def _accept_loop(self) -> None:
        while True:
            try:
                sock, _ = await self.loop.sock_accept(self._listener)
            except OSError as exc:            # out of descriptors, say: wait a little, go on
                log.warning("accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            _tune(sock)
            task = self.loop.create_task(_Connection(self, sock).run())
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def connect_upstream(self) -> socket.socket:
        error: OSError | None = None
        for family, addr in self._upstream_addrs:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                _tune(sock)
                await self.loop.sock_connect(sock, addr)
                return sock
            except OSError as exc:
                sock.close()
                error = exc
            except BaseException:
                sock.close()
                raise
        raise error or OSError(f"cannot resolve {self.upstream_host}")

    async def close(self) -> None:
        if self._accept_task is not None:
            self._accept_task.cancel()
            await asyncio.gather(self._accept_task, return_exceptions=True)
        if self._listener is not None:
            self._listener.close()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _tune(sock: socket.socket) -> None:
    sock.setblocking(False)
    if sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)   # forward small writes at once
