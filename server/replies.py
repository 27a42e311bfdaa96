"""Recent replies by request: a retried request is answered from here, not computed twice.

Keyed by (request_id, plan_epoch): a request re-sent under a new plan is a new computation, a retry
of the same one (after a reset stream or a lost reply) is not. Each entry also holds a digest of the
request's bytes: a retry carries the same bytes, so the same key with another digest is another
request reusing an id, and is refused (ReplyConflict) rather than given this one's answer. A request
still being computed is joined rather than started again. Entries live `ttl_s` seconds and at most
`max_entries` are kept: long enough for a device's retries, short enough to bound memory. An answered
entry keeps the reply itself, not its future: a future (its lock, condition and callbacks) costs more
than the reply, and the cache holds every reply of the last `ttl_s` (scripts/load_test: ~10 % of the
server's memory).
"""
from __future__ import annotations

import threading
import time
from collections import OrderedDict
from concurrent.futures import Future


class ReplyConflict(Exception):
    """The key is in use by a request with other contents."""


class ReplyCache:
    def __init__(self, ttl_s: float = 60.0, max_entries: int = 10_000):
        self.ttl_s = ttl_s
        self.max_entries = max_entries
        # key -> (expiry, digest of the request, the future while it is computed, then its result)
        self._entries: OrderedDict[tuple[str, int], tuple[float, bytes, object]] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0

    def claim(self, key: tuple[str, int], digest: bytes) -> tuple[Future, bool]:
        """(the reply's future, True if the caller must compute it; False: join or reuse it).
        ReplyConflict if `key` belongs to a request whose bytes differ."""
        now = time.monotonic()
        with self._lock:
            self._expire(now)
            entry = self._entries.get(key)
            if entry is not None:
                if entry[1] != digest:
                    raise ReplyConflict(key)
                self.hits += 1
                if isinstance(entry[2], Future):
                    return entry[2], False
                answered: Future = Future()
                answered.set_result(entry[2])
                return answered, False
            future: Future = Future()
            self._entries[key] = (now + self.ttl_s, digest, future)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)
        future.add_done_callback(lambda done: self._settle(key, done))  # outside the lock: it takes it
        return future, True

    def _settle(self, key: tuple[str, int], future: Future) -> None:
        """Keep the reply of an answered request in place of its future (a failure is released)."""
        if future.cancelled() or future.exception() is not None:
            return
        with self._lock:
            entry = self._entries.get(key)
            if entry is not None and entry[2] is future:
                self._entries[key] = (entry[0], entry[1], future.result())

    def release(self, key: tuple[str, int]) -> None:
        """Forget a request that failed: a retry must be computed afresh."""
        with self._lock:
            self._entries.pop(key, None)

    def _expire(self, now: float) -> None:
        while self._entries:
            key, (expires, _, value) = next(iter(self._entries.items()))
            if expires > now or (isinstance(value, Future) and not value.done()):
                break
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
