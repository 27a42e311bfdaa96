"""The channel emulator's accuracy and its own overhead.

* rate accuracy: payloads of 64 KiB to 64 MiB at emulated rates of 1 to 400 Mbit/s (every pair whose
  transfer lasts at most `max_seconds`), each timed `repeats` times from the first byte sent to the
  last byte received; the median against size / rate. The bar: within 5 % for transfers >= 0.5 s.
* overhead: 64 MiB through the emulator at an unlimited rate against the same transfer straight to
  the receiver (target: <= 5 % slower), medians of alternating runs.

The emulator runs as its own process (`coinfer channel`), as in use; rates are set through its
control service. Sender and receiver share this process and its monotonic clock.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from coinfer.lab.bench.common import print_report, pyplot, save_figure

KiB, MiB = 1 << 10, 1 << 20
SIZES = [64 * KiB, 1 * MiB, 8 * MiB, 64 * MiB]
RATES = [1e6, 10e6, 100e6, 400e6]
OVERHEAD_TARGET = 1.05


def run(quick: bool = False, repeats: int | None = None, max_seconds: float | None = None,
        overhead_repeats: int | None = None, out_dir: Path | None = None, progress=None) -> dict:
    import psutil

    from coinfer.channel.control import ChannelControlClient
    from coinfer.channel.measure import Sink, timed_transfer
    from coinfer.lab.launch import ServiceProcess

    repeats = repeats or (1 if quick else 3)
    max_seconds = max_seconds or (0.9 if quick else 1.5)
    overhead_repeats = overhead_repeats or (3 if quick else 15)
    result = {"loadavg_1min": os.getloadavg()[0]}
    with Sink() as sink, ServiceProcess(
            ["channel", "--listen", "127.0.0.1:0", "--upstream", f"127.0.0.1:{sink.port}",
             "--control", "127.0.0.1:0", "--unlimited"], "channel", expect=("listening", "control")) as emulator:
        listen = emulator.port
        with ChannelControlClient(emulator.endpoints["control"]) as control:
            grid = []
            for size in SIZES:
                for rate in RATES:
                    expected = size * 8 / rate
                    if expected > max_seconds:
                        continue
                    control.set_rate(rate)
                    times = [timed_transfer(listen, size, sink)[0] for _ in range(repeats)]
                    median = statistics.median(times)
                    grid.append({"payload_bytes": size, "rate_bps": rate, "expected_s": expected,
                                 "measured_s": median, "runs_s": times, "error": median / expected - 1,
                                 "error_ms": (median - expected) * 1e3, "long_enough_for_5pct_bar": expected >= 0.5})
                    if progress:
                        progress(f"channel {size // KiB} KiB @ {rate / 1e6:g} Mbit/s")
            long_points = [p for p in grid if p["long_enough_for_5pct_bar"]]
            result["rate_accuracy"] = grid
            result["rate_accuracy_max_error"] = max(abs(p["error"]) for p in long_points)
            result["rate_accuracy_max_error_ms_shorter"] = max(
                (abs(p["error_ms"]) for p in grid if not p["long_enough_for_5pct_bar"]), default=None)

            control.set_unlimited()
            size = 64 * MiB
            timed_transfer(listen, size, sink)  # warm both paths up
            timed_transfer(sink.port, size, sink)
            direct, proxied = [], []
            emulator_cpu = psutil.Process(emulator.proc.pid)
            cpu_before = sum(emulator_cpu.cpu_times()[:2])
            for _ in range(overhead_repeats):
                direct.append(timed_transfer(sink.port, size, sink)[0])
                proxied.append(timed_transfer(listen, size, sink)[0])
            if progress:
                progress("channel overhead")
            cpu_per_transfer = (sum(emulator_cpu.cpu_times()[:2]) - cpu_before) / overhead_repeats
            d, p = statistics.median(direct), statistics.median(proxied)
            result.update({
                "overhead": {"payload_bytes": size, "direct_s": d, "proxy_s": p, "direct_runs_s": direct,
                             "proxy_runs_s": proxied, "direct_gbit_s": size * 8 / d / 1e9,
                             "proxy_gbit_s": size * 8 / p / 1e9,
                             "best_runs_ratio": min(proxied) / min(direct),
                             "emulator_cpu_s_per_transfer": cpu_per_transfer},
                "overhead_ratio": p / d, "overhead_target": OVERHEAD_TARGET,
                "emulator_stats": control.stats().to_dict(),
            })
    result["meets_target"] = result["rate_accuracy_max_error"] <= 0.05 and result["overhead_ratio"] <= OVERHEAD_TARGET
    if out_dir is not None:
        result["plot"] = _plot(grid, out_dir)
    return result


def _plot(grid, out_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for rate in RATES:
        points = [(p["payload_bytes"] / MiB, p["error"] * 100) for p in grid if p["rate_bps"] == rate]
        if points:
            ax.semilogx(*zip(*points), marker="o", label=f"{rate / 1e6:g} Mbit/s")
    ax.axhspan(-5, 5, color="green", alpha=0.1, label="±5 % (transfers >= 0.5 s)")
    ax.set_xlabel("payload (MiB)")
    ax.set_ylabel("measured / (size / rate) - 1  (%)")
    ax.set_title("Channel emulator rate accuracy")
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "channel")


def main(argv=None) -> int:
    """scripts/bench_channel."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench_channel", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Benchmark the channel emulator; prints one JSON object (see coinfer.lab.bench.channel).\n\n"
                    "Rate accuracy over payloads of 64 KiB to 64 MiB at 1 to 400 Mbit/s (within 5 % for transfers of\n"
                    "0.5 s and longer), and the proxy's overhead at an unlimited rate against a direct connection on\n"
                    "64 MiB (target <= 5 % slower). Also part of `coinfer bench`.")
    parser.add_argument("--repeats", type=int, default=3, help="timings per grid point (median reported)")
    parser.add_argument("--max-seconds", type=float, default=1.5, help="skip grid points longer than this")
    parser.add_argument("--overhead-repeats", type=int, default=15)
    args = parser.parse_args(argv)
    return print_report(run(repeats=args.repeats, max_seconds=args.max_seconds,
                            overhead_repeats=args.overhead_repeats))


if __name__ == "__main__":
    sys.exit(main())
