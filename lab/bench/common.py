"""Helpers shared by the benchmark sections: inputs, timing, plots."""
from __future__ import annotations

import statistics
import threading
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


def percentile(values, q: float) -> float:
    """The q-th percentile (0..100), linear between order statistics (numpy's default)."""
    xs = sorted(values)
    if not xs:
        return float("nan")
    pos = (len(xs) - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def closed_loop(encode, batch: int, clients: int, sentences: list[str], duration_s: float, min_requests: int = 1) -> dict:
    """`clients` threads, each calling encode(client, texts) with `batch` sentences back to back until
    duration_s has passed (and at least min_requests times): sentences/s over the whole run (from the
    common start to the last answer) and the request latency percentiles."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    done = [0] * clients
    errors: list[BaseException] = []
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def work(i: int) -> None:
        n = i  # clients start at different places in the list, so concurrent requests differ
        start.wait()
        try:
            while len(latencies[i]) < min_requests or time.perf_counter() < stop_at[0]:
                at = (n * batch) % len(sentences)
                texts = (sentences + sentences)[at:at + batch]
                began = time.perf_counter()
                encode(i, texts)
                latencies[i].append(time.perf_counter() - began)
                done[i] += len(texts)
                n += clients
        except BaseException as exc:  # reported below, never silently dropped
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    started = time.perf_counter()
    stop_at[0] = started + duration_s
    start.wait()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - started
    if errors:
        raise errors[0]
    flat = [x * 1e3 for lat in latencies for x in lat]
    return {"sentences_per_s": sum(done) / elapsed, "p50_ms": percentile(flat, 50), "p99_ms": percentile(flat, 99),
            "requests": len(flat)}
