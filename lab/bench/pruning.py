"""Compute time against rho for each pruning method: does pruning really save time?

Unstructured pruning zeroes weights but leaves the matrices dense, so dense kernels take as long;
structured pruning shrinks the matrices. Dense and pruned are timed in turn in one run.
"""
from __future__ import annotations

from pathlib import Path

from coinfer.lab.bench.common import fixed_tokens, median_time, pyplot, save_figure

TARGET_STRUCTURED_HALF = 0.6


def run(model: str = "random:bert-base", split: int = 6, batch: int = 8, seq_len: int = 128,
        ratios=(1.0, 0.75, 0.5, 0.25), repeats: int = 5, out_dir: Path | None = None, progress=None) -> dict:
    from coinfer.models import resolve_model
    from coinfer.pruning import Pruner
    from coinfer.split import DevicePart

    src = resolve_model(model)
    device = DevicePart(src, split)
    pruner = Pruner(device.linear_layers(), seed=src.seed, head_dim=src.head_dim)
    ids, mask = fixed_tokens(src, batch, seq_len)
    rows = []
    for method in ("magnitude", "random", "structured"):
        for rho in ratios:
            # dense right before each pruned point, so each ratio is against a dense time of its moment
            pruner.apply(1.0, method)
            dense_s = median_time(lambda: device(ids, mask), repeats)
            state = pruner.apply(rho, method)
            pruned_s = median_time(lambda: device(ids, mask), repeats)
            rows.append({"method": method, "rho": rho, "achieved_ratio": state.achieved_ratio,
                         "dense_ms": dense_s * 1e3, "pruned_ms": pruned_s * 1e3, "time_ratio": pruned_s / dense_s})
            if progress:
                progress(f"pruning {method} rho={rho}")
    pruner.apply(1.0)
    half = next((r for r in rows if r["method"] == "structured" and r["rho"] == 0.5), None)
    result = {"model": src.name, "split": split, "batch": batch, "seq_len": seq_len, "repeats": repeats,
              "results": rows, "target_structured_half_ratio": TARGET_STRUCTURED_HALF,
              "structured_half_time_ratio": half["time_ratio"] if half else None,
              "meets_target": bool(half and half["time_ratio"] <= TARGET_STRUCTURED_HALF)}
    if out_dir is not None:
        result["plot"] = _plot(rows, src.name, split, out_dir)
    return result


def _plot(rows, name, split, out_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for method in dict.fromkeys(r["method"] for r in rows):
        points = sorted((r["rho"], r["time_ratio"]) for r in rows if r["method"] == method)
        ax.plot(*zip(*points), marker="o", label=method)
    ax.plot([0, 1], [0, 1], color="grey", linestyle=":", label="time ∝ rho (paper's model)")
    ax.set_xlabel("remaining ratio rho")
    ax.set_ylabel("device compute time / dense")
    ax.set_title(f"{name}, device half k={split}")
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "pruning")
