"""One transmitter shared by every connection: bytes leave at the link rate, in FIFO quanta.

The link keeps an ideal schedule rather than a polled token count. A quantum of n bytes that arrived
at t_arr starts at max(link free, t_arr) and ends n*8/R later; its sender is woken at that end time
and told it, so a late wake-up (a busy machine) never shifts the schedule: the next quantum starts
where the previous one ideally ended, and the rate does not drift over long runs. Idle time earns
no credit (a small message after a pause takes exactly n*8/R), yet the schedule may run behind the
clock by up to `max_catchup_s` and catch up at once, which is the "small burst" that absorbs timer
jitter.

Each connection asks for one quantum at a time (about `quantum_s` of air time), so FIFO order is
round-robin between backlogged connections: they share the rate fairly.

A rate change applies to the bytes still on the air: the quantum in flight is finished at the new
rate from the instant of the change, and every later quantum uses the new rate throughout.

All methods run on the event loop's thread.
"""
from __future__ import annotations

import asyncio
import math
from collections import deque

MIN_QUANTUM_BYTES = 512
MAX_QUANTUM_BYTES = 1 << 20


class _InFlight:
    __slots__ = ("nbytes", "future", "done_bytes", "t_acc", "finish", "timer")

    def __init__(self, nbytes: int, future: asyncio.Future, start: float):
        self.nbytes, self.future = nbytes, future
        self.done_bytes = 0.0      # bytes on the air by time t_acc
        self.t_acc = start
        self.finish = math.inf
        self.timer: asyncio.TimerHandle | None = None


class SharedLink:
    def __init__(self, rate_bps: float, *, quantum_s: float = 0.001, max_catchup_s: float = 0.05,
                 loop: asyncio.AbstractEventLoop | None = None):
        self._loop = loop or asyncio.get_running_loop()
        self.quantum_s = quantum_s
        self.max_catchup_s = max_catchup_s
        self._rate = float(rate_bps)
        self._waiters: deque[tuple[int, float, asyncio.Future]] = deque()
        self._head: _InFlight | None = None
        self._t_free = -math.inf         # ideal end of the last quantum granted

    @property
    def rate_bps(self) -> float:
        return self._rate

    @property
    def unlimited(self) -> bool:
        return math.isinf(self._rate)

    @property
    def quantum(self) -> int:
        """Bytes a sender should ask for at once: about quantum_s of air time."""
        if self.unlimited:
            return MAX_QUANTUM_BYTES
        return int(min(MAX_QUANTUM_BYTES, max(MIN_QUANTUM_BYTES, self._rate / 8 * self.quantum_s)))

    def transmit(self, nbytes: int, t_arrival: float) -> asyncio.Future:
        """A future that resolves, with the ideal end time, when `nbytes` (ready since t_arrival) are sent."""
        future = self._loop.create_future()
        if nbytes <= 0 or self.unlimited and self._head is None and not self._waiters:
            future.set_result(max(t_arrival, self._loop.time()) if nbytes > 0 else t_arrival)
            return future
        self._waiters.append((nbytes, t_arrival, future))
        if self._head is None:
            self._run()
        return future

    def set_rate(self, rate_bps: float, at: float | None = None) -> None:
        """Change the rate from time `at` (default now; may be slightly in the past, e.g. a fading
        boundary handled late). The quantum in flight finishes at the new rate."""
        now = self._loop.time()
        at = now if at is None else min(at, now)
        head = self._head
        if head is not None:
            if at > head.t_acc:
                head.done_bytes += self._bytes_in(at - head.t_acc)
                head.t_acc = at
            if head.timer is not None:
                head.timer.cancel()
                head.timer = None
        self._rate = float(rate_bps)
        if head is not None:
            self._schedule_head(now)
            if self._head is None:
                self._run()

    def close(self) -> None:
        """Fail every pending transmission (the emulator is stopping)."""
        if self._head is not None and self._head.timer is not None:
            self._head.timer.cancel()
        pending = [self._head.future] if self._head is not None else []
        pending += [f for _, _, f in self._waiters]
        self._head = None
        self._waiters.clear()
        for future in pending:
            if not future.done():
                future.cancel()

    # -- internals --------------------------------------------------------------------------------
    def _bytes_in(self, seconds: float) -> float:
        return math.inf if self.unlimited else self._rate / 8 * seconds

    def _run(self) -> None:
        """Start quanta from the queue until one has to wait for its end time."""
        while self._head is None and self._waiters:
            nbytes, t_arrival, future = self._waiters.popleft()
            if future.done():             # its connection went away
                continue
            now = self._loop.time()
            start = max(self._t_free, t_arrival, now - self.max_catchup_s)
            self._head = _InFlight(nbytes, future, start)
            self._schedule_head(now)

    def _schedule_head(self, now: float) -> None:
        head = self._head
        remaining = head.nbytes - head.done_bytes
        if self.unlimited or remaining <= 0:
            head.finish = head.t_acc
        elif self._rate > 0:
            head.finish = head.t_acc + remaining * 8 / self._rate
        else:
            head.finish = math.inf        # silent radio: wait for a rate change
            return
        if head.finish <= now:
            self._complete()
        else:
            head.timer = self._loop.call_at(head.finish, self._on_timer)

    def _on_timer(self) -> None:
        self._head.timer = None
        self._complete()
        self._run()

    def _complete(self) -> None:
        head, self._head = self._head, None
        self._t_free = head.finish
        # Resolve on the next loop turn, never inside transmit(): a sender whose grant is already
        # due (the schedule running behind a busy clock) must still yield, so the other senders'
        # requests queue between its quanta and round robin holds.
        self._loop.call_soon(_resolve, head.future, head.finish)


def _resolve(future: asyncio.Future, value: float) -> None:
    if not future.done():
        future.set_result(value)
