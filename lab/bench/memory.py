"""Resident memory of each half at each split point, each built in a fresh process.

Each measurement is a child process that imports torch and transformers (the floor every coinfer
process pays), builds one half (or the whole model) and runs one forward, then reports its RSS, its
peak RSS (ru_maxrss) and the parameters it holds.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from coinfer.lab.bench.common import pyplot, save_figure

CHILD = r"""
import gc, json, resource, sys
import psutil
import coinfer, torch, transformers
from coinfer.models import resolve_model
proc = psutil.Process()
src = resolve_model(sys.argv[1]); src.skeleton
ids, mask = src.tokenize(["memory is measured after one forward of a short sentence"])
floor = proc.memory_info().rss
what, k = sys.argv[2], int(sys.argv[3])
if what == "device":
    from coinfer.split import DevicePart
    held = DevicePart(src, k); held(ids, mask)
elif what == "server":
    from coinfer.split import DevicePart, ServerPart
    hidden = DevicePart(src, k)(ids, mask) if k else ids  # built and dropped before the server half
    gc.collect(); floor = proc.memory_info().rss
    held = ServerPart(src, k); held(hidden, mask)
else:
    from coinfer.lab.monolithic import WholeModel
    held = WholeModel(src); held(ids, mask); held = held.model
gc.collect()
params = sum(p.numel() for p in held.parameters())
print(json.dumps({"rss_floor_mb": floor / 2**20, "rss_mb": proc.memory_info().rss / 2**20,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "parameters": params}))
"""


def measure(model: str, what: str, k: int) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, model, what, str(k)], check=True, capture_output=True,
                         text=True)
    result = json.loads(out.stdout.strip().splitlines()[-1])
    result["model_mb"] = result["rss_mb"] - result["rss_floor_mb"]
    return result


def run(model: str = "minilm", splits=None, out_dir: Path | None = None, progress=None) -> dict:
    from coinfer.models import resolve_model

    src = resolve_model(model)
    splits = list(range(src.num_blocks + 1)) if splits is None else list(splits)
    whole = measure(model, "whole", 0)
    rows = []
    for k in splits:
        row = {"split": k}
        for half in ("device", "server"):
            if half == "device" and k == 0 or half == "server" and k == src.num_blocks and src.family == "bert":
                continue  # that half holds nothing at this k
            row[half] = measure(model, half, k)
            if progress:
                progress(f"memory {half} k={k}")
        rows.append(row)
    result = {"model": src.name, "whole": whole, "results": rows}
    if out_dir is not None:
        result["plot"] = _plot(rows, whole, src.name, out_dir)
    return result


def _plot(rows, whole, name, out_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    for half in ("device", "server"):
        points = [(r["split"], r[half]["peak_rss_mb"]) for r in rows if half in r]
        if points:
            ax.plot(*zip(*points), marker="o", label=f"{half} half, peak RSS")
    ax.axhline(whole["peak_rss_mb"], color="grey", linestyle="--", label="whole model, peak RSS")
    ax.set_xlabel("split point k")
    ax.set_ylabel("MiB")
    ax.set_title(f"Memory per half: {name}")
    ax.legend(fontsize=7)
    return save_figure(fig, out_dir, "memory")
