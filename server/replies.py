"""Recent replies by request: a retried request is answered from here, not computed twice.

Keyed by (request_id, plan_epoch): a request re-sent under a new plan is a new computation, a retry
of the same one (after a reset stream or a lost reply) is not. A request still being computed is
joined rather than started again. Entries live `ttl_s` seconds and at most `max_entries` are kept:
long enough for a device's retries, short enough to bound memory.
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future


class ReplyCache:
    def __init__(self, ttl_s: float = 60.0, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, int], tuple[float, Future]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def claim(self, key: tuple[str, int]) -> tuple[Future, bool]:
        """(the reply's future, True if the caller must compute it; False: join or reuse it)."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                self.hits += 1
                return entry[1], False
            future: Future = Future()
            self._entries[key] = (now + self.ttl_s, future)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
            return future, True

    def release(self, key: tuple[str, int]) -> None:
        """Forget a request that failed: a retry must be computed afresh."""
        with self._lock:
            self._entries.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (expires, future) = next(iter(self._entries.items()))
            if expires > now or not future.done():
                break
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
