"""Split overhead: the split over loopback against the whole model in one process, same inputs.

The server half runs as its own process (`coinfer server` on 127.0.0.1); the device half and the
whole-model reference run here, interleaved run by run so the machine's noise hits both alike.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
from pathlib import Path

from coinfer.lab.bench.common import fixed_tokens, print_report, pyplot, save_figure

TARGET_RATIO = 1.10


def run(model: str = "minilm", splits=(3,), batch: int = 8, seq_len: int = 128, repeats: int = 30,
        warmup: int = 3, codec: str = "fp32", out_dir: Path | None = None, progress=None) -> dict:
    from coinfer.device.runtime import DeviceRuntime
    from coinfer.lab.launch import ServiceProcess
    from coinfer.models import resolve_model
    from coinfer.lab.monolithic import WholeModel

    src = resolve_model(model)
    ids, mask = fixed_tokens(src, batch, seq_len)
    whole = WholeModel(src)
    rows = []
    for k in splits:
        with ServiceProcess(["server", "--model", model, "--split", str(k), "--listen", "127.0.0.1:0"],
                            f"server-k{k}", stderr=open(os.devnull, "w")) as server:
            device = DeviceRuntime(src, k, server=server.address, codec=codec)
            try:
                device.connect()
                whole_s, parts = [], []
                for i in range(warmup + repeats):
                    expected, took = _timed(whole, ids, mask)
                    got = device.infer_tokens(ids, mask)
                    if i >= warmup:
                        whole_s.append(took)
                        parts.append(got)
                    if progress:
                        progress(f"split k={k} run {i + 1}/{warmup + repeats}")
                max_diff = (got.output - expected).abs().max().item()
            finally:
                device.close()
        whole_med = statistics.median(whole_s)
        split_med = statistics.median(p.end_to_end_s for p in parts)
        rows.append({
            "split": k, "whole_ms": whole_med * 1e3, "split_ms": split_med * 1e3, "ratio": split_med / whole_med,
            "device_compute_ms": statistics.median(p.device_compute_s for p in parts) * 1e3,
            "encode_ms": statistics.median(p.encode_s for p in parts) * 1e3,
            "transfer_ms": statistics.median(p.transfer_s for p in parts) * 1e3,
            "server_compute_ms": statistics.median(p.server_compute_s for p in parts) * 1e3,
            "bytes_sent": parts[-1].bytes_sent, "max_abs_diff": max_diff,
        })
    result = {"model": src.name, "batch": batch, "seq_len": seq_len, "codec": codec, "repeats": repeats,
              "target_ratio": TARGET_RATIO, "results": rows,
              "meets_target": all(r["ratio"] <= TARGET_RATIO for r in rows)}
    if out_dir is not None:
        result["plot"] = _plot(rows, out_dir)
    return result


def _timed(whole, ids, mask):
    import time

    started = time.perf_counter()
    out = whole(ids, mask)
    return out, time.perf_counter() - started


def _plot(rows, out_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    labels = [f"k={r['split']}" for r in rows]
    x = range(len(rows))
    ax.bar([i - 0.2 for i in x], [r["whole_ms"] for r in rows], 0.4, label="whole model, one process")
    bottom = [0.0] * len(rows)
    for key, label in [("device_compute_ms", "device compute"), ("encode_ms", "encode"),
                       ("transfer_ms", "transfer"), ("server_compute_ms", "server compute")]:
        values = [r[key] for r in rows]
        ax.bar([i + 0.2 for i in x], values, 0.4, bottom=bottom, label=f"split: {label}")
        bottom = [b + v for b, v in zip(bottom, values)]
    ax.set_xticks(list(x), labels)
    ax.set_ylabel("median latency (ms)")
    ax.set_title("Split over loopback vs whole model")
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "split_overhead")


def main(argv=None) -> int:
    """scripts/bench_split."""
    parser = argparse.ArgumentParser(
        prog="scripts/bench_split", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Split overhead: end-to-end split inference over loopback against the whole model in one "
                    "process.\n\nThe server half runs in its own process (`coinfer server`, 127.0.0.1, free port); "
                    "the device half and\nthe whole-model reference run here, on the same inputs, interleaved run by "
                    "run so that the machine's\nnoise hits both alike. Prints one JSON object; `ratio` = median split "
                    "/ median whole (target <= 1.10).\nAlso part of `coinfer bench`.")
    parser.add_argument("--model", default="minilm")
    parser.add_argument("--split", type=int, nargs="+", default=[3], help="split points to measure")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--codec", default="fp32")
    args = parser.parse_args(argv)
    return print_report(run(args.model, args.split, args.batch, args.seq_len, args.repeats, args.warmup, args.codec))


if __name__ == "__main__":
    sys.exit(main())
