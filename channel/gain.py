"""Time-varying channel gain: Rayleigh block fading and recorded gain traces.

Both are functions of the emulator's clock t (seconds since it started) that are piecewise constant,
and both say when their value next changes, so the emulator re-rates its link exactly at those
instants instead of polling.
"""
from __future__ import annotations

import bisect
import csv
import math
import random
from pathlib import Path

from coinfer.radio import db_to_linear


class RayleighBlockFading:
    """|h|^2 ~ Exp(1), redrawn every `coherence_s` seconds (block fading).

    The factor of block k depends only on (seed, k), never on call order, so two emulators with the
    same seed see the same sequence, and any instant can be asked again.
    """

    def __init__(self, coherence_s: float, seed: int):
        if not coherence_s > 0:
            raise ValueError(f"coherence time must be > 0 s, got {coherence_s}")
        self.coherence_s = float(coherence_s)
        self.seed = int(seed)
        self._cached_block = -1
        self._cached_value = 1.0

    def block(self, t: float) -> int:
        return max(0, math.floor(t / self.coherence_s))

    def factor_of_block(self, k: int) -> float:
        if k != self._cached_block:
            # A string seed is hashed with SHA-512: stable across runs and Python versions.
            u = random.Random(f"coinfer-rayleigh:{self.seed}:{k}").random()
            self._cached_block, self._cached_value = k, -math.log1p(-u)  # inverse CDF of Exp(1)
        return self._cached_value

    def factor_at(self, t: float) -> float:
        return self.factor_of_block(self.block(t))

    def next_change(self, t: float) -> float:
        return (self.block(t) + 1) * self.coherence_s


class GainTrace:
    """A recorded gain: value g_i from time t_i until t_{i+1}; the last value holds after the end.

    Before the first time the first value applies.
    """

    def __init__(self, times_s: list[float], gains: list[float], source: str = "trace"):
        if not times_s:
            raise ValueError(f"{source}: no (time, gain) points")
        if len(times_s) != len(gains):
            raise ValueError(f"{source}: {len(times_s)} times but {len(gains)} gains")
        for i, (t, g) in enumerate(zip(times_s, gains)):
            if not (math.isfinite(t) and t >= 0):
                raise ValueError(f"{source}: point {i + 1}: time must be a finite number >= 0, got {t}")
            if not (math.isfinite(g) and g >= 0):
                raise ValueError(f"{source}: point {i + 1}: gain must be a finite number >= 0, got {g}")
            if i and t <= times_s[i - 1]:
                raise ValueError(f"{source}: point {i + 1}: times must increase ({t} after {times_s[i - 1]})")
        self.times_s = [float(t) for t in times_s]
        self.gains = [float(g) for g in gains]

    def gain_at(self, t: float) -> float:
        i = bisect.bisect_right(self.times_s, t) - 1
        return self.gains[max(i, 0)]

    def next_change(self, t: float) -> float:
        i = bisect.bisect_right(self.times_s, t)
        return self.times_s[i] if i < len(self.times_s) else math.inf


def load_trace(path: str | Path) -> GainTrace:
    """Read a gain trace: one `time_s, gain` pair a line (comma or whitespace separated).

    Blank lines and lines starting with '#' are skipped. An optional header line names the columns;
    a header `time_s,gain_db` means the second column is in dB. Raises ValueError naming the line.
    """
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ValueError(f"cannot read trace {path}: {exc.strerror or exc}") from None
    times, gains = [], []
    in_db = False
    seen_data = False
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        fields = next(csv.reader([stripped.replace("\t", " ")], delimiter="," if "," in stripped else " ",
                                 skipinitialspace=True))
        fields = [f.strip() for f in fields if f.strip()]
        if len(fields) != 2:
            raise ValueError(f"{path}:{lineno}: expected two columns (time_s, gain), got {stripped!r}")
        try:
            t, g = float(fields[0]), float(fields[1])
        except ValueError:
            if seen_data or times:
                raise ValueError(f"{path}:{lineno}: not a number: {stripped!r}") from None
            in_db = fields[1].lower() in ("gain_db", "gain (db)", "db")
            seen_data = True  # only one header line
            continue
        seen_data = True
        gain = db_to_linear(g) if in_db else g
        if not (math.isfinite(t) and t >= 0):
            raise ValueError(f"{path}:{lineno}: time must be a finite number >= 0, got {fields[0]}")
        if not (math.isfinite(gain) and gain >= 0):
            raise ValueError(f"{path}:{lineno}: gain must be a finite number >= 0, got {fields[1]}")
        if times and t <= times[-1]:
            raise ValueError(f"{path}:{lineno}: times must increase ({t:g} after {times[-1]:g})")
        times.append(t)
        gains.append(gain)
    return GainTrace(times, gains, source=str(path))
