"""Running the sections, with progress, and writing bench.json, the plots and summary.md."""
from __future__ import annotations

import json
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path

# (quick, full) keyword arguments per section
SETTINGS = {
    "split": ({"splits": (3,), "repeats": 5, "warmup": 2}, {"splits": (1, 3, 5), "repeats": 30, "warmup": 3}),
    "codecs": ({}, {}),
    "pruning": ({"ratios": (0.5,), "repeats": 2}, {"ratios": (1.0, 0.75, 0.5, 0.25), "repeats": 5}),
    "batching": ({"devices": (1, 8), "seconds": 1.0}, {"devices": (1, 2, 4, 8), "seconds": 8.0}),
    "planner": ({"repeat": 30, "sweeps": 3}, {"repeat": 200, "sweeps": 20}),
    "channel": ({"quick": True}, {"quick": False}),
    "memory": ({"splits": (3,)}, {"model": "random:bert-base", "splits": None}),
    # ~50 s even in quick form (a server per split and engine, two peers, every cell): only when named
    "throughput": ({"clients": (1, 4), "engines": ("eager",), "duration_s": 0.5, "rounds": 1},
                   {"clients": (1, 4, 16), "duration_s": 3.0, "rounds": 3}),
}

SECTIONS = tuple(SETTINGS)
OPT_IN = ("throughput",)  # left out of a run that names no sections

# (section, result key, how to show it, target text, met?) for the summary table
SUMMARY = [
    ("split", lambda r: max(x["ratio"] for x in r["results"]), "{:.3f}", "<= 1.10",
     lambda r: r["meets_target"], "split / whole latency, MiniLM batch 8 x 128 (worst k)"),
    ("codecs", lambda r: r["int8_min_bytes_ratio"], "{:.2f}x", ">= 3.9x",
     lambda r: r["int8_min_bytes_ratio"] >= 3.9, "int8 bytes saving vs fp32"),
    ("codecs", lambda r: r["int8_min_cosine"], "{:.5f}", ">= 0.999",
     lambda r: r["int8_min_cosine"] >= 0.999, "int8 min cosine similarity to fp32 path (any k)"),
    ("pruning", lambda r: r["structured_half_time_ratio"], "{:.3f}", "<= 0.6",
     lambda r: r["meets_target"], "structured rho=0.5 / dense compute, bert-base k=6"),
    ("batching", lambda r: next(v for k, v in r.items() if k.startswith("speedup_at_")), "{:.2f}x", ">= 2x",
     lambda r: r["meets_target"], "throughput with batching / without, most devices"),
    ("batching", lambda r: r["compute_only_speedup"], "{:.2f}x", "(reference)",
     lambda r: None, "batching's compute alone: 8 forwards one by one / one forward of 8"),
    ("planner", lambda r: r["resolve_median_s"] * 1e3, "{:.2f} ms", "<= 5 ms",
     lambda r: r["resolve_median_s"] <= 0.005, "one DPP re-solve (median)"),
    ("planner", lambda r: r["sweep_13_median_s"] * 1e3, "{:.1f} ms", "<= 100 ms",
     lambda r: r["sweep_13_median_s"] <= 0.1, "13-point bert-base split sweep (median)"),
    ("channel", lambda r: r["rate_accuracy_max_error"] * 100, "{:.2f} %", "<= 5 %",
     lambda r: r["rate_accuracy_max_error"] <= 0.05, "worst rate error, transfers >= 0.5 s"),
    ("channel", lambda r: r["overhead_ratio"], "{:.3f}", "<= 1.05",
     lambda r: r["overhead_ratio"] <= 1.05, "proxy at unlimited rate / direct, 64 MiB"),
    ("throughput", lambda r: r["k0_vs_onnxruntime_min_ratio"], "{:.2f}x", ">= 1.00x",
     lambda r: r["k0_vs_onnxruntime_min_ratio"] >= 1.0,
     "coinfer k=0 (best engine) / whole model in ONNX Runtime, worst cell"),
    ("throughput", lambda r: r["k0_vs_sentence_transformers_min_ratio"], "{:.2f}x", ">= 1.00x",
     lambda r: r["k0_vs_sentence_transformers_min_ratio"] >= 1.0,
     "coinfer k=0 (best engine) / sentence-transformers, worst cell"),
]


def _section_module(name: str):
    import importlib

    return importlib.import_module(f"coinfer.lab.bench.{name}")


def chosen(only=None) -> list[str]:
    """The sections a run measures, in suite order: those named, else all but the opt-in ones."""
    return [s for s in SECTIONS if (s in only if only else s not in OPT_IN)]


def run_suite(out: str, quick: bool = False, only=None) -> dict:
    from tqdm import tqdm

    from coinfer.lab.hardware import describe

    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    names = chosen(only)
    report = {"machine": describe(), "quick": quick, "started": datetime.now(timezone.utc).isoformat(),
              "sections": {}}
    bar = tqdm(names, desc="coinfer bench", unit="section", file=sys.stderr, dynamic_ncols=True)
    for name in bar:
        bar.set_description(f"coinfer bench: {name}")
        started = time.perf_counter()
        try:
            kwargs = dict(SETTINGS[name][0 if quick else 1])
            result = _section_module(name).run(out_dir=out_dir, progress=bar.set_postfix_str, **kwargs)
        except Exception as exc:  # one broken section must not lose the others' results
            result = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
            bar.write(f"[bench] section {name} failed: {result['error']}")
        result["seconds"] = time.perf_counter() - started
        report["sections"][name] = result
        _write(report, out_dir)  # after every section, so an interrupted run keeps what it measured
    bar.close()
    report["summary"] = summarise(report["sections"])
    report["finished"] = datetime.now(timezone.utc).isoformat()
    _write(report, out_dir)
    table = summary_markdown(report)
    (out_dir / "summary.md").write_text(table)
    print(table)
    return report


def summarise(sections: dict) -> list[dict]:
    rows = []
    for name, value, fmt, target, met, what in SUMMARY:
        result = sections.get(name)
        if result is None or "error" in result:
            continue
        try:
            rows.append({"section": name, "what": what, "value": fmt.format(value(result)), "target": target,
                         "met": bool(met(result))})
        except (KeyError, StopIteration, TypeError):
            rows.append({"section": name, "what": what, "value": "n/a", "target": target, "met": None})
    return rows


def summary_markdown(report: dict) -> str:
    machine = report["machine"]
    lines = [f"coinfer bench{' --quick' if report['quick'] else ''} on {machine['cpu_model']} "
             f"({machine['logical_cores']} logical cores, {machine['memory_gib']} GiB; "
             f"GPU: {machine['cuda']['device'] or 'none'}), {report['started'][:19]} UTC", "",
             "| measure | value | target | met |", "| --- | --- | --- | --- |"]
    for row in report["summary"]:
        met = {True: "yes", False: "**no**", None: "?"}[row["met"]]
        lines.append(f"| {row['what']} | {row['value']} | {row['target']} | {met if row['target'] != '(reference)' else '-'} |")
    failed = [name for name, section in report["sections"].items() if "error" in section]
    if failed:
        lines += ["", "Sections that failed: " + ", ".join(failed)]
    return "\n".join(lines) + "\n"


def _write(report: dict, out_dir: Path) -> None:
    (out_dir / "bench.json").write_text(json.dumps(report, indent=2, default=str))
