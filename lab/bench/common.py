"""Helpers shared by the benchmark sections: inputs, timing, plots."""
from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Callable

LONG_TEXT = " ".join(["split inference moves hidden states from the device to the server"] * 40)


def fixed_tokens(src, batch: int, seq_len: int):
    """[batch, seq_len] token ids and mask of real text, no padding: the benchmark's standard input."""
    return src.tokenize([LONG_TEXT] * batch, max_length=seq_len, padding="max_length")


def median_time(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def save_figure(fig, out_dir: Path, name: str) -> str:
    path = Path(out_dir) / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path.name


def pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only; these machines have no screen
    import matplotlib.pyplot as plt

    return plt


def print_report(result: dict, machine: bool = True) -> int:
    """What a scripts/bench_* prints: the section's result as one JSON object, with the machine it ran on."""
    import json

    if machine:
        from coinfer.lab.hardware import describe

        result["machine"] = describe()
    print(json.dumps(result, indent=2, default=str))
    return 0
