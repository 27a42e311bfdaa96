"""Capped exponential backoff with jitter, for reconnecting and retrying (Petals' client config is the
model: one small dataclass that every retry loop takes)."""
from __future__ import annotations

import random
from dataclasses import dataclass


@dataclass(frozen=True)
class RetryPolicy:
    initial_s: float = 0.1
    max_s: float = 5.0
    multiplier: float = 2.0
    jitter: float = 0.2        # +- this fraction, so many clients do not retry in lockstep
    max_attempts: int = 8      # for retries of one request; reconnect loops ignore it

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based)."""
        base = min(self.max_s, self.initial_s * self.multiplier ** attempt)
        spread = (rng or random).uniform(-self.jitter, self.jitter)
        return max(0.0, base * (1.0 + spread))
