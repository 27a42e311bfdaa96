"""Resident memory of each half at each split point, each in a process of its own.

Each measurement is a freshly exec'd interpreter that imports torch and transformers (the floor every
coinfer process pays), builds one half (or the whole model) and runs one forward, then reports its
RSS, its own peak RSS and the parameters it holds.

The peak is the kernel's high-water mark of the process's address space (VmHWM in /proc/self/status),
which starts anew at exec. `ru_maxrss` would not do: Linux carries it across exec from the forked
copy of the parent, so every child of a big benchmark process reported the parent's peak. The server
half's input at k > 0 is a random tensor of the shape a device half sends: no process ever holds more
than the half it measures.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from coinfer.lab.bench.common import pyplot, save_figure

CHILD = r"""
import gc, json, sys
import coinfer, torch, transformers
from coinfer.models import resolve_model

def status_mb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":")) / 1024

src = resolve_model(sys.argv[1]); src.skeleton
ids, mask = src.tokenize(["memory is measured after one forward of a short sentence"])
gc.collect()
floor, import_peak = status_mb("VmRSS"), status_mb("VmHWM")
what, k = sys.argv[2], int(sys.argv[3])
if what == "device":
    from coinfer.split import DevicePart
    held = DevicePart(src, k); held(ids, mask)
elif what == "server":
    from coinfer.split import ServerPart
    held = ServerPart(src, k)
    # What a device half would send, [batch, seq, hidden]: made here, so that no device half is ever
    # built in this process (the values do not change the memory a half needs).
    hidden = torch.randn(*ids.shape, src.hidden_size, dtype=next(held.parameters()).dtype) if k else ids
    held(hidden, mask)
else:
    from coinfer.lab.monolithic import WholeModel
    held = WholeModel(src); held(ids, mask); held = held.model
gc.collect()
params = sum(p.numel() for p in held.parameters())
print(json.dumps({"rss_floor_mb": floor, "import_peak_rss_mb": import_peak, "rss_mb": status_mb("VmRSS"),
                  "peak_rss_mb": status_mb("VmHWM"), "parameters": params}))
"""


def measure(model: str, what: str, k: int) -> dict:
    """One of "device", "server", "whole" at split point k, in a fresh interpreter: MiB and parameters.

    rss_mb: resident after the forward; rss_floor_mb: before building (torch, transformers, the
    tokenizer); model_mb: the difference; peak_rss_mb: the process's own high-water mark.
    """
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
    result = {"model": src.name, "num_blocks": src.num_blocks, "measure": "VmHWM of a fresh interpreter per point",
              "whole": whole, "results": rows}
    if out_dir is not None:
        result["plot"] = _plot(rows, whole, src.name, src.num_blocks, out_dir)
    return result


def _plot(rows, whole, name, num_blocks, out_dir) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for half, marker in (("device", "o"), ("server", "s")):
        points = [(r["split"], r[half]["peak_rss_mb"]) for r in rows if half in r]
        if points:
            ax.plot(*zip(*points), marker=marker, label=f"{half} half, peak RSS")
    ax.axhline(whole["peak_rss_mb"], color="grey", linestyle="--",
               label=f"whole model, peak RSS ({whole['peak_rss_mb']:.0f} MiB)")
    # The whole model is filled in one piece (ModelSource.load_into: every value read, then copied in), so
    # its peak holds its weights twice; a half is filled module by module, its peak near its resident size.
    ax.axhline(whole["rss_mb"], color="grey", linestyle="-.", linewidth=0.8,
               label=f"whole model, resident after the forward ({whole['rss_mb']:.0f} MiB)")
    floor = min(r[h]["import_peak_rss_mb"] for r in rows for h in ("device", "server") if h in r)
    ax.axhline(floor, color="grey", linestyle=":", label=f"torch + transformers imported ({floor:.0f} MiB)")
    ax.set_xlabel(f"split point k (device holds blocks < k, of {num_blocks})")
    ax.set_ylabel("MiB")
    ax.set_ylim(floor * 0.9, whole["peak_rss_mb"] * 1.35)  # room for the legend above the lines
    ax.set_title(f"Peak memory per process: {name}")
    ax.legend(fontsize=7, loc="upper center", ncol=2)
    return save_figure(fig, out_dir, "memory")


def main(argv=None) -> int:
    """scripts/device_memory: the device half, the server half and the whole model at one k."""
    parser = argparse.ArgumentParser(
        prog="scripts/device_memory",
        description="Resident memory of the device half and the server half against the whole model, each "
                    "built in a fresh process. Prints one JSON object: RSS above the torch/transformers "
                    "import floor, the process's own peak RSS, and the parameters each holds (`coinfer "
                    "bench` reports every k).")
    parser.add_argument("--model", default="random:bert-base")
    parser.add_argument("--split", type=int, default=2)
    args = parser.parse_args(argv)
    device = measure(args.model, "device", args.split)
    server = measure(args.model, "server", args.split)
    whole = measure(args.model, "whole", args.split)
    print(json.dumps({
        "benchmark": "device_memory", "model": args.model, "split": args.split,
        "device": device, "server": server, "whole": whole,
        "device_over_whole_rss": device["rss_mb"] / whole["rss_mb"],
        "device_over_whole_peak_rss": device["peak_rss_mb"] / whole["peak_rss_mb"],
        "device_over_whole_model_mb": device["model_mb"] / whole["model_mb"],
    }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
